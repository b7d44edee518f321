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

-- The caller: consumer, tier name, and the API key's Secret when a key was used; or nil, nil and why not.
-- Consumers of JWT and mTLS are prefixed ("jwt:", "cert:"), so they never share an API-key consumer's
-- counters. JWT tiers are tried in priority order.
local function authenticate(handle, now)
  local info = handle:streamInfo()
  local ssl = info:downstreamSslConnection()
  if ssl ~= nil then
    -- Each mTLS tier has a listener (port) of its own that trusts only that tier's CA.
    local tier_name = T.mtls_ports[(info:downstreamLocalAddress() or ""):match(":(%d+)$") or ""]
    if tier_name == nil or not ssl:peerCertificateValidated() then
      return nil, nil, "no valid client certificate for this port"
    end
    local sans = ssl:uriSanPeerCertificate()
    for _, san in ipairs(ssl:dnsSansPeerCertificate()) do sans[#sans + 1] = san end
    if not san_allowed(T.tiers[tier_name].mtls, sans) then
      return nil, nil, "client certificate not allowed for tier " .. tier_name
    end
    return "cert:" .. (sans[1] or ssl:subjectPeerCertificate()), tier_name
  end
  local verified = handle:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  if verified ~= nil then
    local scopes_missing = false
    for _, name in ipairs(T.order) do
      local payload, jwt = verified[name], T.tiers[name].jwt
      if payload ~= nil and jwt ~= nil then
        if has_scopes(payload, jwt.scopes) and payload[jwt.claim] ~= nil then
          return "jwt:" .. tostring(payload[jwt.claim]), name
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
  return credential.consumer, credential.tier, nil, credential.id
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

-- The largest max_tokens in a parameters object, or nil; an error when one cannot be read the way Triton
-- and a backend would read it (every duplicate counts, so no reading of the JSON can ask for more).
local function requested_max_tokens(parameters)
  if parameters:find("\\u", 1, true) then return nil, "escape sequences are not accepted in parameters" end
  local most, from = nil, 1
  while true do
    local at = parameters:find('"max_tokens"', from, true)
    if at == nil then return most end
    local number = parameters:match("^%s*:%s*(%d+)%s*[,}]", at + 12)
    if number == nil then return nil, "parameters.max_tokens must be a whole number" end
    most = math.max(most or 0, tonumber(number))
    from = at + 12
  end
end

-- The JSON with the tier's priority as the request's first parameter (Triton reads the first of
-- duplicate keys, so a client cannot outrank its tier), the max_tokens asked for, or nil and an error.
local function with_priority(json, level)
  local open, close = top_level_parameters(json)
  local setting = '"priority":' .. level
  if open == nil then
    local brace = json:find("{", 1, true)
    if brace == nil then return json end
    local empty = json:match("^%s*}", brace + 1) ~= nil
    return json:sub(1, brace) .. '"parameters":{' .. setting .. "}" .. (empty and "" or ",")
      .. json:sub(brace + 1)
  end
  local max_tokens, problem = requested_max_tokens(json:sub(open, close))
  if problem then return nil, nil, problem end
  local empty = json:match("^%s*}", open + 1) ~= nil
  return json:sub(1, open) .. setting .. (empty and "" or ",") .. json:sub(open + 1), max_tokens
end

-- Rewrite an HTTP infer body; returns the tokens to reserve (a prompt estimate plus the output allowed),
-- or nil and why the request is refused.
local function prepare_http_infer(handle, model, level)
  local body = handle:body()
  if body == nil then return model.max_tokens end
  local headers = handle:headers() -- fetched after body(): a wrapper taken before it is out of scope
  local bytes = body:getBytes(0, body:length())
  local json_length = tonumber(headers:get("inference-header-content-length") or "") or #bytes
  local json, rest = bytes:sub(1, json_length), bytes:sub(json_length + 1)
  local rewritten, max_tokens, problem = with_priority(json, level)
  if rewritten == nil then return nil, problem end
  body:setBytes(rewritten .. rest)
  headers:replace("content-length", tostring(#rewritten + #rest))
  if headers:get("inference-header-content-length") then
    headers:replace("inference-header-content-length", tostring(#rewritten))
  end
  return math.ceil(#bytes / 4) + (max_tokens or model.max_tokens)
end

-- gRPC (Triton's inference.GRPCInferenceService): the model is routed by the model_name and model_version
-- fields the request carries (protobuf fields 1 and 2 of every per-model request), read from the body.

local function varint(bytes, at)
  local value, scale = 0, 1
  while true do
    local byte = bytes:byte(at)
    if byte == nil then return nil end
    value, at = value + (byte % 128) * scale, at + 1
    if byte < 128 then return value, at end
    scale = scale * 128
  end
end

local function encode_varint(value)
  local out = {}
  repeat
    local byte = value % 128
    value = math.floor(value / 128)
    out[#out + 1] = string.char(value > 0 and byte + 128 or byte)
  until value == 0
  return table.concat(out)
end

local function length_field(number, value)
  return encode_varint(number * 8 + 2) .. encode_varint(#value) .. value
end

-- The top-level fields of a protobuf message: {number, wire, start, value_start, stop} each (stop exclusive;
-- for wire type 0 the value is read with varint at value_start); nil when the bytes are not a message.
local function fields(message)
  local found, at = {}, 1
  while at <= #message do
    local start, key = at, nil
    key, at = varint(message, at)
    if key == nil then return nil end
    local wire, value_start, stop = key % 8, at, nil
    if wire == 0 then
      local _
      _, stop = varint(message, at)
    elseif wire == 1 then
      stop = at + 8
    elseif wire == 2 then
      local length
      length, value_start = varint(message, at)
      if length == nil then return nil end
      stop = value_start + length
    elseif wire == 5 then
      stop = at + 4
    else
      return nil
    end
    if stop == nil or stop > #message + 1 then return nil end
    found[#found + 1] = { number = math.floor(key / 8), wire = wire, start = start, value_start = value_start, stop = stop }
    at = stop
  end
  return found
end

-- Fields 1 and 2 (strings) of a protobuf message, and the message's other fields unchanged; nil if garbled.
local function name_and_version(message)
  local found = fields(message)
  if found == nil then return nil end
  local name, version, rest = "", "", {}
  for _, field in ipairs(found) do
    local value = message:sub(field.value_start, field.stop - 1)
    if field.number == 1 and field.wire == 2 then
      name = value
    elseif field.number == 2 and field.wire == 2 then
      version = value
    else
      rest[#rest + 1] = message:sub(field.start, field.stop - 1)
    end
  end
  return name, version, table.concat(rest)
end

-- The largest parameters["max_tokens"] of a ModelInferRequest (field 4, a map of InferParameter), or nil;
-- an error when one is not a whole number (int64, uint64 or a decimal string).
local function grpc_max_tokens(message)
  local most = nil
  for _, field in ipairs(fields(message) or {}) do
    if field.number == 4 and field.wire == 2 then
      local entry = message:sub(field.value_start, field.stop - 1)
      local key, value = nil, nil
      for _, part in ipairs(fields(entry) or {}) do
        if part.number == 1 then key = entry:sub(part.value_start, part.stop - 1) end
        if part.number == 2 then value = entry:sub(part.value_start, part.stop - 1) end
      end
      if key == "max_tokens" then
        local number = nil
        for _, choice in ipairs(fields(value or "") or {}) do
          if choice.wire == 0 and (choice.number == 2 or choice.number == 5) then
            number = varint(value, choice.value_start)
          elseif choice.number == 3 then
            number = tonumber(value:sub(choice.value_start, choice.stop - 1):match("^%d+$") or "")
          end
        end
        if number == nil then return nil, "parameters.max_tokens must be a whole number" end
        most = math.max(most or 0, number)
      end
    end
  end
  return most
end

local function frame(message)
  local n = #message
  return string.char(0, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
    .. message
end

local SERVER_METHODS = { ServerLive = true, ServerReady = true, ServerMetadata = true }
local MODEL_METHODS = { ModelInfer = true, ModelReady = true, ModelMetadata = true, ModelConfig = true }

-- The model and version a request names; an error status and message when it names none that is served.
local function resolve(model_name, alias, pinned)
  local model = T.models[model_name]
  if model == nil then return nil, nil, 404, "no model " .. model_name end
  local version = pinned or model.aliases[alias]
  if version == nil or model.versions[version] == nil then
    return nil, nil, 404, "model " .. model_name .. " has no version or alias " .. tostring(pinned or alias)
  end
  return model, version
end

-- Everything a model request goes through, HTTP or gRPC: sunset, caller, access, limits, cluster.
-- Returns the tier and the limit scopes, or nil after answering the request itself.
local function admit(handle, model_name, model, version, limited)
  local now = os.time()
  local dates = model.versions[version]
  if dates.sunset ~= nil and now >= dates.sunset then
    refuse(handle, 410, "this model version was switched off on " .. dates.sunset_date)
    return nil
  end
  local consumer, tier_name, why, credential = authenticate(handle, now)
  if consumer == nil then
    refuse(handle, 401, why, { ["www-authenticate"] = 'Bearer realm="tollway"' })
    return nil
  end
  local tier = T.tiers[tier_name]
  if not tier.allowed[model_name .. "@" .. version] then
    refuse(handle, 403, "tier " .. tier_name .. " may not use " .. model_name .. " version " .. version)
    return nil
  end
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(NS, "consumer", consumer)
  metadata:set(NS, "tier", tier_name)
  metadata:set(NS, "model", model_name)
  metadata:set(NS, "version", tostring(version))
  if credential then metadata:set(NS, "credential", credential) end
  local scopes = tier.scopes[model_name]
  if limited then
    local mode = tier.fail_open and "_open" or "_closed"
    for limit, scope in pairs(scopes) do metadata:set(NS, limit .. mode, scope) end
  end
  return tier, scopes
end

local function route_to(handle, cluster)
  local headers = handle:headers()
  headers:remove("authorization")
  headers:remove("x-api-key")
  headers:replace("x-tollway-cluster", cluster)
  handle:clearRouteCache()
end

-- Charge `reserve` tokens before the request runs (the ratelimit filters read it); false after refusing a
-- request that could never fit the tier's token limit (nor would a larger reservation ever be charged).
local function reserve_tokens(handle, tier, model_name, model, scopes, reserve)
  if model.input == nil or not (scopes.tpm or scopes.tpd) then return true end
  local cap = tier.token_caps[model_name]
  if cap ~= nil and reserve > cap then
    refuse(handle, 429, "the request reserves " .. reserve .. " tokens, more than the tier's limit of " .. cap)
    return false
  end
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(NS, "reserve", tostring(reserve))
  metadata:set(NS, "settle", "0")
  return true
end

local function grpc_request(handle)
  local method = (handle:headers():get(":path") or ""):match("^/inference%.GRPCInferenceService/(%w+)$")
  if SERVER_METHODS[method] then
    if T.server_cluster == nil then return refuse(handle, 503, "no model is served here yet") end
    return route_to(handle, T.server_cluster)
  end
  if not MODEL_METHODS[method] then
    return refuse(handle, 403, "the gateway does not offer " .. tostring(method))
  end
  local body = handle:body()
  local bytes = body and body:getBytes(0, body:length()) or ""
  if #bytes < 5 or bytes:byte(1) ~= 0 then
    return refuse(handle, 400, "send one uncompressed gRPC message")
  end
  local name, pinned, rest = name_and_version(bytes:sub(6))
  if name == nil then return refuse(handle, 400, "the request is not a protobuf message") end
  local model_name, alias = name:match("^(.-):(.+)$")
  model_name, alias = model_name or name, alias or "latest"
  local model, version, status, message = resolve(model_name, alias, tonumber(pinned))
  if model == nil then return refuse(handle, status, message) end
  local tier, scopes = admit(handle, model_name, model, version, method == "ModelInfer")
  if tier == nil then return end
  local rewritten = length_field(1, model_name) .. length_field(2, tostring(version)) .. rest
  if method == "ModelInfer" then -- parameters["priority"] = uint64 level; the last of duplicate map keys wins
    local max_tokens, problem = grpc_max_tokens(rest)
    if problem then return refuse(handle, 400, problem) end
    local reserve = math.ceil(#bytes / 4) + (max_tokens or model.max_tokens)
    if not reserve_tokens(handle, tier, model_name, model, scopes, reserve) then return end
    local level = encode_varint(5 * 8) .. encode_varint(tier.level)
    rewritten = rewritten .. length_field(4, length_field(1, "priority") .. length_field(2, level))
  end
  body:setBytes(frame(rewritten))
  route_to(handle, tier.grpc_clusters[model_name] or model.grpc_cluster)
end

local function http_request(handle, route, kind)
  local headers = handle:headers()
  local encoding = headers:get("content-encoding")
  if encoding ~= nil and encoding ~= "identity" then
    return refuse(handle, 415, "send the request body uncompressed")
  end
  headers:remove("accept-encoding") -- the gateway reads the token counts in the response
  local model_name, version = route:get("model"), number(route:get("version"))
  local model = T.models[model_name]
  local tier, scopes = admit(handle, model_name, model, version, kind == "infer")
  if tier == nil then return end
  route_to(handle, tier.clusters[model_name] or model.cluster)
  if kind ~= "infer" then return end
  local reserve, problem = prepare_http_infer(handle, model, tier.level)
  if reserve == nil then return refuse(handle, 400, problem) end
  reserve_tokens(handle, tier, model_name, model, scopes, reserve)
end

local function on_request(handle)
  local route = handle:metadata()
  local kind = route:get("kind")
  if kind == "grpc" then return grpc_request(handle) end
  if kind ~= nil then return http_request(handle, route, kind) end
end

function envoy_on_request(handle)
  handle:headers():remove("x-tollway-cluster")
  handle:clearRouteCache() -- so the route's cluster never comes from a header the client sent
  local ok, failure = pcall(on_request, handle)
  if not ok then -- never let a request through that this script did not finish checking
    handle:logErr("tollway gateway: " .. tostring(failure))
    refuse(handle, 500, "the gateway could not process this request")
  end
end

local function first_number(value)
  return value and value:match("^%s*(%d+)")
end

-- The largest count reported under `key` anywhere in the response: text a model generated can only make
-- the charge larger, never smaller.
local function used_tokens(text, key)
  local most = nil
  for number in text:gmatch("[^%w_]" .. key .. '\\?"%s*:%s*(%d+)') do
    most = math.max(most or 0, tonumber(number))
  end
  return most
end

-- The tokens the model reported: recorded for the usage counters and the access log, and, when the
-- request reserved tokens, what they exceed the reservation by is charged too (at the end of the stream).
local function count_tokens(handle, state, model)
  local body = handle:body()
  if body == nil then return end
  local text = body:getBytes(0, body:length())
  local input, output = used_tokens(text, model.input), used_tokens(text, model.output)
  if input == nil and output == nil then return end
  input, output = input or 0, output or 0
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(NS, "input_tokens", tostring(input))
  metadata:set(NS, "output_tokens", tostring(output))
  if state.reserve == nil then return end
  local reserved = tonumber(state.reserve)
  local extra = math.max(0, input + output - reserved)
  metadata:set(NS, "settle", tostring(extra))
  local headers = handle:headers()
  local remaining = tonumber(first_number(headers:get("x-ratelimit-remaining-tokens")) or "")
  if remaining ~= nil then
    headers:replace("x-ratelimit-remaining-tokens", tostring(math.max(0, remaining - extra)))
  end
end

local function on_response(handle)
  local headers = handle:headers()
  for _, name in ipairs({ "x-ratelimit-limit", "x-ratelimit-limit-tokens" }) do
    local limit = first_number(headers:get(name))
    if limit then headers:replace(name, limit) end
  end
  local state = handle:streamInfo():dynamicMetadata():get(NS) or {}
  local tier = state.tier and T.tiers[state.tier]
  local model = state.model and T.models[state.model]
  if headers:get(":status") == "503" and headers:get("x-envoy-upstream-service-time") and model then
    headers:replace("retry-after", tostring(model.retry_after)) -- Triton's queue is full: its estimated wait
  end
  if headers:get(":status") == "429" and (tier == nil or tier.retry_after) then
    local reset = math.max(
      tonumber(headers:get("x-ratelimit-reset") or "") or 0,
      tonumber(headers:get("x-ratelimit-reset-tokens") or "") or 0
    )
    headers:replace("retry-after", tostring(math.max(reset, 1)))
  end
  local dates = model and model.versions[tonumber(state.version)] or {}
  if dates.announced ~= nil and os.time() >= dates.announced then
    headers:replace("deprecation", "@" .. dates.announced)
    if dates.sunset_http then headers:replace("sunset", dates.sunset_http) end
    if dates.link then headers:replace("link", "<" .. dates.link .. '>; rel="deprecation"') end
  end
  if model and model.input ~= nil and headers:get(":status") == "200" then count_tokens(handle, state, model) end
end

function envoy_on_response(handle)
  local ok, failure = pcall(on_response, handle)
  if not ok then handle:logErr("tollway gateway (response): " .. tostring(failure)) end
end
