-- Tollway's gateway, run by Envoy's Lua filter on every request: the thin part that talks to Envoy. It reads
-- the request off `handle`, asks the pure modules (access, models, json, protobuf, tokens; render/lua.py
-- bundles them before this) what to do, and does it. `T` (above) is the data Tollway rendered from the
-- namespace's ApiTiers, ModelDeployments and API-key Secrets; this code never changes between renders.
-- Envoy's own filters do the rest: jwt_authn verifies tokens before this runs, the ratelimit filters after
-- it read the dynamic metadata set here, and the router sends the request to the cluster named in
-- x-tollway-cluster. The clock is read once per request and per response.
--
-- Errors answer with a plain message; the listener's local_reply_config wraps every local reply in JSON.

local access = require("tollway.access")
local json = require("tollway.json")
local models = require("tollway.models")
local protobuf = require("tollway.protobuf")
local tokens = require("tollway.tokens")

local NS = "tollway"

local function refuse(handle, status, message, headers)
  local all = { [":status"] = tostring(status) }
  for name, value in pairs(headers or {}) do
    all[name] = value
  end
  handle:respond(all, message)
end

-- The caller's consumer, tier name, nil and API key Secret; or nil, nil and why not (see access.lua).
local function authenticate(handle, now)
  local info = handle:streamInfo()
  local ssl = info:downstreamSslConnection()
  if ssl ~= nil then
    local sans = ssl:uriSanPeerCertificate()
    for _, san in ipairs(ssl:dnsSansPeerCertificate()) do
      sans[#sans + 1] = san
    end
    local address, validated = info:downstreamLocalAddress(), ssl:peerCertificateValidated()
    return access.certificate_caller(T, address, validated, sans, ssl:subjectPeerCertificate())
  end
  local consumer, tier_name, why =
    access.token_caller(T, info:dynamicMetadata():get("envoy.filters.http.jwt_authn"))
  if consumer ~= nil or why ~= nil then return consumer, tier_name, why end
  local headers = handle:headers()
  local key = access.presented_key(headers:get("authorization"), headers:get("x-api-key"))
  return access.key_caller(T.credentials, key, now)
end

-- Everything a model request goes through, HTTP or gRPC: sunset, caller, access, limits.
-- Returns the tier and the limit scopes, or nil after answering the request itself.
local function admit(handle, now, model_name, model, version, limited)
  local switched_off = models.switched_off(model.versions[version], now)
  if switched_off then return refuse(handle, 410, switched_off) end
  local consumer, tier_name, why, credential = authenticate(handle, now)
  if consumer == nil then
    return refuse(handle, 401, why, { ["www-authenticate"] = 'Bearer realm="tollway"' })
  end
  local tier = T.tiers[tier_name]
  if not tier.allowed[model_name .. "@" .. version] then
    return refuse(
      handle,
      403,
      "tier " .. tier_name .. " may not use " .. model_name .. " version " .. version
    )
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
    for limit, scope in pairs(scopes) do
      metadata:set(NS, limit .. mode, scope)
    end
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

-- Charge a request of `body_length` bytes before it runs (the ratelimit filters read the reservation);
-- false after refusing one that could never fit the tier's token limit.
local function reserve_tokens(handle, tier, model_name, model, scopes, body_length, max_tokens)
  local reserve, problem = tokens.reservation(tier, model_name, model, scopes, body_length, max_tokens)
  if reserve == false then
    refuse(handle, 429, problem)
    return false
  end
  local metadata = handle:streamInfo():dynamicMetadata()
  if model.input ~= nil then -- what a response that reports no usage is charged
    metadata:set(NS, "estimate", tostring(tokens.estimate(model, body_length, max_tokens)))
  end
  if reserve ~= nil then
    metadata:set(NS, "reserve", tostring(reserve))
    metadata:set(NS, "settle", "0")
  end
  return true
end

local SERVER_METHODS = { ServerLive = true, ServerReady = true, ServerMetadata = true }
local MODEL_METHODS = { ModelInfer = true, ModelReady = true, ModelMetadata = true, ModelConfig = true }

local function grpc_request(handle, now)
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
  local message = protobuf.unframe(bytes)
  if message == nil then return refuse(handle, 400, "send one uncompressed gRPC message") end
  local name, pinned, rest = protobuf.name_and_version(message)
  if name == nil then return refuse(handle, 400, "the request is not a protobuf message") end
  local model_name, alias = models.split_name(name)
  local model, version, status, problem = models.resolve(T.models, model_name, alias, tonumber(pinned))
  if model == nil then return refuse(handle, status, problem) end
  local infer = method == "ModelInfer"
  local tier, scopes = admit(handle, now, model_name, model, version, infer)
  if tier == nil then return end
  if infer then
    local max_tokens, unreadable = protobuf.grpc_max_tokens(rest)
    if unreadable then return refuse(handle, 400, unreadable) end
    if not reserve_tokens(handle, tier, model_name, model, scopes, #bytes, max_tokens) then return end
  end
  body:setBytes(
    protobuf.frame(protobuf.routed_request(model_name, version, rest, infer and tier.level or nil))
  )
  route_to(handle, tier.grpc_clusters[model_name] or model.grpc_cluster)
end

-- Rewrite an HTTP infer body with the tier's priority; the body's length and the max_tokens it asks for, or
-- nil, nil and why the request is refused.
local function prepare_http_infer(handle, level)
  local body = handle:body()
  if body == nil then return 0 end
  local headers = handle:headers() -- fetched after body(): a wrapper taken before it is out of scope
  local bytes = body:getBytes(0, body:length())
  -- Triton's binary tensor extension: the JSON is the first Inference-Header-Content-Length bytes.
  local declared, json_length = headers:get("inference-header-content-length"), #bytes
  if declared ~= nil then
    json_length = tonumber(declared:match("^%d+$") or "")
    if json_length == nil or json_length > #bytes then
      return nil, nil, "Inference-Header-Content-Length must be a whole number no larger than the body"
    end
  end
  local rewritten, max_tokens, problem = json.with_priority(bytes:sub(1, json_length), level)
  if rewritten == nil then return nil, nil, problem end
  local rest = bytes:sub(json_length + 1)
  body:setBytes(rewritten .. rest)
  headers:replace("content-length", tostring(#rewritten + #rest))
  if headers:get("inference-header-content-length") then
    headers:replace("inference-header-content-length", tostring(#rewritten))
  end
  return #bytes, max_tokens
end

local function http_request(handle, now, route, kind)
  local headers = handle:headers()
  local encoding = headers:get("content-encoding")
  if encoding ~= nil and encoding ~= "identity" then
    return refuse(handle, 415, "send the request body uncompressed")
  end
  headers:remove("accept-encoding") -- the gateway reads the token counts in the response
  -- Route metadata holds numbers as numbers or (from some sources) strings.
  local model_name, version = route:get("model"), tonumber(route:get("version") or "")
  local model = T.models[model_name]
  local tier, scopes = admit(handle, now, model_name, model, version, kind == "infer")
  if tier == nil then return end
  route_to(handle, tier.clusters[model_name] or model.cluster)
  if kind ~= "infer" then return end
  local body_length, max_tokens, problem = prepare_http_infer(handle, tier.level)
  if problem then return refuse(handle, 400, problem) end
  reserve_tokens(handle, tier, model_name, model, scopes, body_length, max_tokens)
end

local function on_request(handle, now)
  local route = handle:metadata()
  local kind = route:get("kind")
  if kind ~= nil and access.credential_in_query(handle:headers():get(":path")) then
    return refuse(
      handle,
      401,
      "send credentials in the Authorization or x-api-key header, never in the URL",
      { ["www-authenticate"] = 'Bearer realm="tollway"' }
    )
  end
  if kind == "grpc" then return grpc_request(handle, now) end
  if kind ~= nil then return http_request(handle, now, route, kind) end
end

function envoy_on_request(handle)
  handle:headers():remove("x-tollway-cluster")
  -- Envoy sets its own on a rewrite; a client's would reach the access log as the path
  handle:headers():remove("x-envoy-original-path")
  handle:clearRouteCache() -- so the route's cluster never comes from a header the client sent
  local ok, failure = pcall(on_request, handle, os.time())
  if not ok then -- never let a request through that this script did not finish checking
    handle:logErr("tollway gateway: " .. tostring(failure))
    refuse(handle, 500, "the gateway could not process this request")
  end
end

-- The tokens the model reported: recorded for the usage counters and the access log, and, when the
-- request reserved tokens, what they exceed the reservation by is charged too (at the end of the stream).
-- A served response that reports none is charged its estimate (see tokens.settlement); an empty one or a
-- gRPC error served nothing.
local function count_tokens(handle, state, model)
  local body = handle:body()
  if body == nil or body:length() == 0 then return end
  local headers = handle:headers() -- fetched after body(): a wrapper taken before it is out of scope
  local served = (headers:get("grpc-status") or "0") == "0"
  local text = body:getBytes(0, body:length())
  local estimate = served and state.estimate or nil
  local input, output, extra, unreported = tokens.settlement(text, model, state.reserve, estimate)
  if input == nil then return end
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(NS, "input_tokens", tostring(input))
  metadata:set(NS, "output_tokens", tostring(output))
  if unreported then metadata:set(NS, "unreported", state.tier) end -- counted per tier for an alert
  if extra == nil then return end
  metadata:set(NS, "settle", tostring(extra))
  local remaining = tokens.remaining_after(headers:get("x-ratelimit-remaining-tokens"), extra)
  if remaining ~= nil then headers:replace("x-ratelimit-remaining-tokens", remaining) end
end

local function on_response(handle, now)
  local headers = handle:headers()
  for _, name in ipairs({ "x-ratelimit-limit", "x-ratelimit-limit-tokens" }) do
    local limit = tokens.first_number(headers:get(name))
    if limit then headers:replace(name, limit) end
  end
  local state = handle:streamInfo():dynamicMetadata():get(NS) or {}
  local tier = state.tier and T.tiers[state.tier]
  local model = state.model and T.models[state.model]
  local status = headers:get(":status")
  if status == "503" and headers:get("x-envoy-upstream-service-time") and model then
    headers:replace("retry-after", tostring(model.retry_after)) -- Triton's queue is full: its estimated wait
  end
  if status == "429" and (tier == nil or tier.retry_after) then
    local reset = math.max(
      tonumber(headers:get("x-ratelimit-reset") or "") or 0,
      tonumber(headers:get("x-ratelimit-reset-tokens") or "") or 0
    )
    headers:replace("retry-after", tostring(math.max(reset, 1)))
  end
  local dates = model and model.versions[tonumber(state.version)] or {}
  for _, header in ipairs(models.deprecation_headers(dates, now)) do
    headers:replace(header[1], header[2])
  end
  if model and model.input ~= nil and status == "200" then count_tokens(handle, state, model) end
end

function envoy_on_response(handle)
  local ok, failure = pcall(on_response, handle, os.time())
  if not ok then handle:logErr("tollway gateway (response): " .. tostring(failure)) end
end
