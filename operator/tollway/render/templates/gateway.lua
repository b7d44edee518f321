-- Tollway's gateway logic, run by Envoy's Lua filter on every request. `T` (above) is the data Tollway
-- rendered from the namespace's ApiTiers, ModelDeployments and API-key Secrets; this code never changes
-- between renders. Envoy's own filters do the rest: jwt_authn verifies tokens before this runs, the
-- ratelimit filters after it read the dynamic metadata set here, and the router sends the request to the
-- cluster named in x-tollway-cluster.
--
-- Errors answer with a plain message; the listener's local_reply_config wraps every local reply in JSON.

local NS = "tollway"

-- Route metadata holds numbers as numbers or (from some sources) strings; a missing key returns nothing.
local function number(value)
  if value == nil then return nil end
  return tonumber(value)
end

local function refuse(handle, status, message, headers)
  local all = { [":status"] = tostring(status) }
  for name, value in pairs(headers or {}) do all[name] = value end
  handle:respond(all, message)
end

local function presented_key(headers)
  local authorization = headers:get("authorization")
  if authorization then
    local token = authorization:match("^[Bb]earer%s+(%S+)%s*$")
    if token then return token end
  end
  return headers:get("x-api-key")
end

local function san_allowed(patterns, sans)
  if #patterns == 0 then return true end
  for _, san in ipairs(sans) do
    for _, pattern in ipairs(patterns) do
      if pattern:sub(-1) == "*" then
        if san:sub(1, #pattern - 1) == pattern:sub(1, -2) then return true end
      elseif san == pattern then
        return true
      end
    end
  end
  return false
end

local function has_scopes(payload, required)
  if #required == 0 then return true end
  local granted = {}
  local scope = payload["scope"] or payload["scp"]
  if type(scope) == "string" then
    for word in scope:gmatch("%S+") do granted[word] = true end
  elseif type(scope) == "table" then
    for _, word in ipairs(scope) do granted[word] = true end
  end
  for _, word in ipairs(required) do
    if not granted[word] then return false end
  end
  return true
end

-- The caller: consumer, tier name; or nil, nil and why not. Tiers are tried in priority order.
local function authenticate(handle, now)
  local ssl = handle:streamInfo():downstreamSslConnection()
  if ssl ~= nil and ssl:peerCertificatePresented() and ssl:peerCertificateValidated() then
    local sans = ssl:uriSanPeerCertificate()
    for _, san in ipairs(ssl:dnsSansPeerCertificate()) do sans[#sans + 1] = san end
    for _, name in ipairs(T.order) do
      local tier = T.tiers[name]
      if tier.mtls and san_allowed(tier.mtls, sans) then
        return sans[1] or ssl:subjectPeerCertificate(), name
      end
    end
    return nil, nil, "client certificate not allowed for any tier"
  end
  local verified = handle:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  if verified ~= nil then
    local scopes_missing = false
    for _, name in ipairs(T.order) do
      local payload, jwt = verified[name], T.tiers[name].jwt
      if payload ~= nil and jwt ~= nil then
        if has_scopes(payload, jwt.scopes) and payload[jwt.claim] ~= nil then
          return tostring(payload[jwt.claim]), name
        end
        scopes_missing = true
      end
    end
    if scopes_missing then return nil, nil, "token lacks a required scope or the consumer claim" end
  end
  local key = presented_key(handle:headers())
  if key == nil then
    return nil, nil, "missing credential: send Authorization: Bearer KEY or x-api-key: KEY"
  end
  local credential = T.credentials[key]
  if credential == nil then return nil, nil, "invalid API key or token" end
  if credential.expires ~= nil and now >= credential.expires then return nil, nil, "API key expired" end
  return credential.consumer, credential.tier
end

-- KServe v2 JSON: the span of the top-level "parameters" object ({ and } positions), or nil.
local function top_level_parameters(json)
  local depth, position = 0, 1
  while true do
    local at = json:find('[{}%[%]"]', position)
    if at == nil then return nil end
    local char = json:sub(at, at)
    if char == '"' then
      local close = at + 1
      while true do
        close = json:find('["\\]', close)
        if close == nil then return nil end
        if json:sub(close, close) == "\\" then close = close + 2 else break end
      end
      if depth == 1 and json:sub(at + 1, close - 1) == "parameters" then
        local open = json:match("^%s*:%s*(){", close + 1)
        if open == nil then return nil end
        local inner, scan = 0, open
        while true do
          local next_at = json:find('[{}"]', scan)
          if next_at == nil then return nil end
          local c = json:sub(next_at, next_at)
          if c == '"' then
            scan = next_at + 1
            while true do
              scan = json:find('["\\]', scan)
              if scan == nil then return nil end
              if json:sub(scan, scan) == "\\" then scan = scan + 2 else break end
            end
            scan = scan + 1
          else
            inner = inner + (c == "{" and 1 or -1)
            scan = next_at + 1
            if inner == 0 then return open, next_at end
          end
        end
      end
      position = close + 1
    else
      depth = depth + ((char == "{" or char == "[") and 1 or -1)
      position = at + 1
    end
  end
end

-- The JSON with the tier's priority as the request's first parameter (Triton reads the first of
-- duplicate keys, so a client cannot outrank its tier), and the max_tokens the client asked for.
local function with_priority(json, level)
  local open, close = top_level_parameters(json)
  local setting = '"priority":' .. level
  if open == nil then
    local brace = json:find("{", 1, true)
    if brace == nil then return json, nil end
    local empty = json:match("^%s*}", brace + 1) ~= nil
    return json:sub(1, brace) .. '"parameters":{' .. setting .. "}" .. (empty and "" or ",")
      .. json:sub(brace + 1), nil
  end
  local max_tokens = tonumber(json:sub(open, close):match('"max_tokens"%s*:%s*(%d+)'))
  local empty = json:match("^%s*}", open + 1) ~= nil
  return json:sub(1, open) .. setting .. (empty and "" or ",") .. json:sub(open + 1), max_tokens
end

-- Rewrite an HTTP infer body; returns the tokens to reserve (a prompt estimate plus the output allowed).
local function prepare_http_infer(handle, model, level)
  local body = handle:body()
  if body == nil then return model.max_tokens end
  local headers = handle:headers() -- fetched after body(): a wrapper taken before it is out of scope
  local bytes = body:getBytes(0, body:length())
  local json_length = tonumber(headers:get("inference-header-content-length") or "") or #bytes
  local json, rest = bytes:sub(1, json_length), bytes:sub(json_length + 1)
  local rewritten, max_tokens = with_priority(json, level)
  body:setBytes(rewritten .. rest)
  headers:replace("content-length", tostring(#rewritten + #rest))
  if headers:get("inference-header-content-length") then
    headers:replace("inference-header-content-length", tostring(#rewritten))
  end
  return math.ceil(#bytes / 4) + (max_tokens or model.max_tokens)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove("x-tollway-cluster")
  local route = handle:metadata()
  local kind = route:get("kind")
  if kind == nil then return end
  local now = os.time()
  local sunset = number(route:get("sunset"))
  if sunset ~= nil and now >= sunset then
    return refuse(handle, 410, "this model version was switched off on " .. route:get("sunset_date"))
  end
  local consumer, tier_name, why = authenticate(handle, now)
  if consumer == nil then
    return refuse(handle, 401, why, { ["www-authenticate"] = 'Bearer realm="tollway"' })
  end
  local model_name, version = route:get("model"), route:get("version")
  local tier = T.tiers[tier_name]
  if not tier.allowed[model_name .. "@" .. version] then
    return refuse(handle, 403, "tier " .. tier_name .. " may not use " .. model_name .. " version " .. version)
  end
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(NS, "consumer", consumer)
  metadata:set(NS, "tier", tier_name)
  metadata:set(NS, "model", model_name)
  metadata:set(NS, "version", tostring(version))
  headers:remove("authorization")
  headers:remove("x-api-key")
  local model = T.models[model_name]
  headers:replace("x-tollway-cluster", tier.clusters[model_name] or model.cluster)
  handle:clearRouteCache()
  if kind ~= "infer" then return end
  local mode = tier.fail_open and "_open" or "_closed"
  local scopes = tier.scopes[model_name]
  for limit, scope in pairs(scopes) do metadata:set(NS, limit .. mode, scope) end
  local reserve = prepare_http_infer(handle, model, tier.level)
  if model.input ~= nil and (scopes.tpm or scopes.tpd) then
    metadata = handle:streamInfo():dynamicMetadata() -- again: body() ended the old wrapper's scope
    metadata:set(NS, "reserve", tostring(reserve))
    metadata:set(NS, "settle", "0")
  end
end

local function first_number(value)
  return value and value:match("^%s*(%d+)")
end

local function used_tokens(text, key)
  return tonumber(text:match("[^%w_]" .. key .. '\\?"%s*:%s*(%d+)'))
end

local function settle_tokens(handle, state)
  local model = T.models[state.model]
  local body = handle:body()
  if body == nil then return end
  local text = body:getBytes(0, body:length())
  local input, output = used_tokens(text, model.input), used_tokens(text, model.output)
  if input == nil and output == nil then return end
  input, output = input or 0, output or 0
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(NS, "input_tokens", tostring(input))
  metadata:set(NS, "output_tokens", tostring(output))
  local reserved = tonumber(state.reserve)
  local extra = math.max(0, input + output - reserved)
  metadata:set(NS, "settle", tostring(extra))
  local headers = handle:headers()
  local remaining = tonumber(first_number(headers:get("x-ratelimit-remaining-tokens")) or "")
  if remaining ~= nil then
    headers:replace("x-ratelimit-remaining-tokens", tostring(math.max(0, remaining - extra)))
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  for _, name in ipairs({ "x-ratelimit-limit", "x-ratelimit-limit-tokens" }) do
    local limit = first_number(headers:get(name))
    if limit then headers:replace(name, limit) end
  end
  local state = handle:streamInfo():dynamicMetadata():get(NS) or {}
  local tier = state.tier and T.tiers[state.tier]
  if headers:get(":status") == "429" and (tier == nil or tier.retry_after) then
    local reset = math.max(
      tonumber(headers:get("x-ratelimit-reset") or "") or 0,
      tonumber(headers:get("x-ratelimit-reset-tokens") or "") or 0
    )
    headers:replace("retry-after", tostring(math.max(reset, 1)))
  end
  local route = handle:metadata()
  local announced = number(route:get("announced"))
  if announced ~= nil and os.time() >= announced then
    headers:replace("deprecation", "@" .. announced)
    if route:get("sunset_http") then headers:replace("sunset", route:get("sunset_http")) end
    if route:get("link") then headers:replace("link", "<" .. route:get("link") .. '>; rel="deprecation"') end
  end
  if state.reserve ~= nil and headers:get(":status") == "200" then settle_tokens(handle, state) end
end
