-- The models and versions the gateway serves (`T.models`), their aliases and deprecation dates. Pure
-- functions: the clock is the caller's `now` (Unix seconds).

local M = {}

-- A gRPC request's model_name: "chat" (the latest version) or "chat:stable" (an alias); model and alias.
function M.split_name(name)
  local model_name, alias = name:match("^(.-):(.+)$")
  return model_name or name, alias or "latest"
end

-- An OpenAI request's `model`: "chat" (the latest version), "chat:stable" (an alias) or "chat@2" (a pinned
-- version); model, alias and pinned version.
function M.reference(name)
  local model_name, pinned = name:match("^(.-)@(%d+)$")
  if model_name ~= nil then return model_name, nil, tonumber(pinned) end
  local split, alias = M.split_name(name)
  return split, alias, nil
end

-- GET /v1/models: the model objects of a tier's listing (render/envoy.py's model_listing) whose version is
-- not past its sunset at `now`, as OpenAI's list object.
function M.listing(entries, now)
  local found = {}
  for _, entry in ipairs(entries) do
    if entry.sunset == nil or now < entry.sunset then found[#found + 1] = entry.json end
  end
  return '{"object":"list","data":[' .. table.concat(found, ",") .. "]}"
end

-- GET /v1/models/ID: the model object named `id` (percent-escapes decoded) in a tier's listing, or nil.
function M.listed(entries, id, now)
  local decoded = id:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end)
  for _, entry in ipairs(entries) do
    if entry.id == decoded and (entry.sunset == nil or now < entry.sunset) then return entry.json end
  end
  return nil
end

-- A name a client sent, as a refusal may repeat it: only plain words, since the message goes into a JSON
-- reply (and a gRPC status message) as it is.
local function echoed(name)
  local plain = name:match("^[%w_.:@%-]+$")
  return plain or "(a name with other characters)"
end

-- The model and version a request names; nil, nil, an error status and message when it names none served.
function M.resolve(models, model_name, alias, pinned)
  local model = models[model_name]
  if model == nil then return nil, nil, 404, "no model " .. echoed(model_name) end
  local version = pinned or model.aliases[alias]
  if version == nil or model.versions[version] == nil then
    local named = echoed(tostring(pinned or alias))
    return nil, nil, 404, "model " .. model_name .. " has no version or alias " .. named
  end
  return model, version
end

-- Why a version no longer answers at `now`, or nil while it does.
function M.switched_off(dates, now)
  if dates.sunset ~= nil and now >= dates.sunset then
    return "this model version was switched off on " .. dates.sunset_date
  end
  return nil
end

-- The response headers that announce a version's deprecation from its announcement on: {name, value} pairs.
function M.deprecation_headers(dates, now)
  if dates.announced == nil or now < dates.announced then return {} end
  local headers = { { "deprecation", "@" .. dates.announced } }
  if dates.sunset_http then headers[#headers + 1] = { "sunset", dates.sunset_http } end
  if dates.link then headers[#headers + 1] = { "link", "<" .. dates.link .. '>; rel="deprecation"' } end
  return headers
end

-- GET /v1/capacity: each model of `names` (those a tier may use) as the capacity document's line for it says
-- (`lines`: each model's JSON object by name), or as unknown when the document has none.
function M.capacity(names, lines)
  local entries = {}
  for _, name in ipairs(names) do
    entries[#entries + 1] = lines[name] or ('{"model":"' .. name .. '","state":"unknown"}')
  end
  return '{"object":"list","data":[' .. table.concat(entries, ",") .. "]}"
end

-- The capacity document's lines by model (each line is a JSON object that starts with its model's name).
function M.capacity_lines(text)
  local lines = {}
  for line in text:gmatch("[^\n]+") do
    local name = line:match('^{"model":"([^"\\]+)"')
    if name then lines[name] = line end
  end
  return lines
end

return M
