-- Tollway's gateway, first of its two Lua programs: the thin part that talks to Envoy before a request's body
-- is read, and on the way back. It reads the request's headers off `handle`, asks the pure modules (access,
-- models, tokens; render/lua.py bundles them before this) what to do, and does it through `stream`. `T`
-- (above) is the data Tollway rendered from the namespace's ApiTiers, ModelDeployments and API-key Secrets;
-- this code never changes between renders.
--
-- Envoy's own filters do the rest: jwt_authn verifies tokens before this runs; the request-count filters
-- right after it read the metadata set here, so a caller who is unknown, refused or over a request limit
-- is answered before a byte of its body is buffered. Only then does the second program (body.lua) read the
-- body: it rewrites the priority and reserves tokens (and, for gRPC, whose model is named inside the body,
-- resolves the model). The router sends the request to the cluster named in x-tollway-cluster. Each
-- program reads the clock once per request; this one once more per response.
--
-- Errors answer with a plain message; the listener's local_reply_config wraps every local reply in JSON.

local access = require("tollway.access")
local models = require("tollway.models")
local protobuf = require("tollway.protobuf")
local sample = require("tollway.sample")
local stream = require("tollway.stream")
local tokens = require("tollway.tokens")

local NS = stream.NS
local refuse = stream.refuse

-- What a stream's chunk keeps of the one before it: enough for a usage comment cut in two.
local STREAM_TAIL = 64
-- How much of a sampled stream is kept to put its text back together, per byte its record keeps: events
-- wrap each token in JSON.
local STREAM_OVERHEAD = 8
-- What a model's OpenAI server says of its answer cache in `x-tollway-cache` (any other value is ignored).
local CACHE_RESULTS = { hit = "hit", miss = "miss", skip = "skip", off = "off" }

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

-- The key signals this worker sent this hour (access.sightings): a caller's steady traffic from one network
-- and program sends them once an hour, not with every request.
local sightings = access.sightings(10000)

-- The key-compromise signals of a request (counted when it ends, by the stream-end filter: see
-- render/ratelimit.py), unless this worker sent the same ones this hour; `sighting` names them, for the
-- response to mark as sent.
local function set_signals(handle, now, metadata, consumer, tier_name, new_key)
  local agent = access.agent_product(handle:headers():get("user-agent"))
  local network = access.network_of(handle:streamInfo():downstreamRemoteAddress())
  local sighting = table.concat({ tier_name, consumer, network or "?", agent, new_key and "new" or "" }, "|")
  if sightings.seen(sighting, math.floor(now / 3600)) then return end
  metadata:set(NS, "sighting", sighting)
  metadata:set(NS, "signal_tier", access.counter_name(tier_name))
  metadata:set(NS, "agent", agent)
  if new_key and network then -- new keys are counted per network: many from one is a farm of sign-ups
    metadata:set(NS, "new_key_network", network)
  end
end

-- Record the caller for the ratelimit filters (in the counters' form, with its tier's per-address scope),
-- the network rules, body.lua and the access log; `kind` is the route's (infer, ready, metadata or grpc);
-- `new_key`: the caller's API key was created less than T.new_key_seconds ago.
local function set_caller(handle, now, kind, consumer, tier_name, credential, new_key)
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(NS, "kind", kind)
  metadata:set(NS, "consumer", consumer)
  metadata:set(NS, "tier", tier_name)
  metadata:set(NS, "counter_consumer", access.counter_name(consumer))
  metadata:set(NS, "counter_tier", access.counter_name(tier_name))
  if credential then metadata:set(NS, "credential", credential) end
  local tier = T.tiers[tier_name]
  if tier.per_address then
    metadata:set(NS, tier.fail_open and "address_open" or "address_closed", tier.per_address)
  end
  if tier.signals then set_signals(handle, now, metadata, consumer, tier_name, new_key) end
end

-- A caller without a valid credential. Where such callers are limited per client address, its 401 is left
-- to body.lua, so that the request filters between the two count it first (a flood of guesses is answered
-- 429; such counts fail open); otherwise answered now.
local function unauthenticated(handle, why)
  if T.unauthenticated_scope == nil then return stream.unauthenticated(handle, why) end
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(NS, "address_open", T.unauthenticated_scope)
  metadata:set(NS, "refused", why)
  stream.route_to(handle, T.refused_cluster) -- Envoy's ratelimit filters skip a request with no cluster
end

local SERVER_METHODS = { ServerLive = true, ServerReady = true, ServerMetadata = true }
local MODEL_METHODS = {
  ModelInfer = true,
  ModelStreamInfer = true, -- one request a stream (body.lua), for decoupled models' streamed answers
  ModelReady = true,
  ModelMetadata = true,
  ModelConfig = true,
}

-- What a request is, from its headers: true for a model request whose caller is still to be asked; nil after
-- answering it or routing it without one.
local function screen(handle, kind)
  local headers = handle:headers()
  if kind == "grpc" then
    local method = (headers:get(":path") or ""):match("^/inference%.GRPCInferenceService/(%w+)$")
    if SERVER_METHODS[method] then
      if T.server_cluster == nil then return refuse(handle, 503, "no model is served here yet") end
      handle:streamInfo():dynamicMetadata():set(NS, "kind", kind) -- body.lua bounds what it sends
      return stream.route_to(handle, T.server_cluster)
    end
    if not MODEL_METHODS[method] then
      return refuse(handle, 403, "the gateway does not offer " .. tostring(method))
    end
    return true
  end
  local encoding = headers:get("content-encoding")
  if encoding ~= nil and encoding ~= "identity" then
    return refuse(handle, 415, "send the request body uncompressed")
  end
  headers:remove("accept-encoding") -- the gateway reads the token counts in the response
  return true
end

-- An HTTP request names its model and version in its route: checked, limited and routed on its headers.
local function admit_http(handle, now, route, kind, tier_name)
  -- Route metadata holds numbers as numbers or (from some sources) strings.
  local model_name, version = route:get("model"), tonumber(route:get("version") or "")
  local model, tier = T.models[model_name], T.tiers[tier_name]
  local declared = tonumber(handle:headers():get("content-length") or "")
  if declared ~= nil and declared > model.max_body then return stream.too_large(handle, model_name, model) end
  local inference = kind == "infer" or kind == "generate"
  local scopes = stream.admit_model(handle, now, tier_name, tier, model_name, model, version, inference, "")
  if scopes == nil then return end
  if kind == "generate" then -- generate_stream's time to first token
    handle:streamInfo():dynamicMetadata():set(NS, "start_ms", tostring(handle:timestamp()))
  end
  stream.route_to(handle, tier.clusters[model_name] or model.cluster)
end

-- GET /v1/models and /v1/models/ID: what the caller's tier may name in an OpenAI request, answered here.
local function list_models(handle, now, kind, tier_name)
  local entries = T.listings[T.tiers[tier_name].listing]
  local text = models.listing(entries, now)
  if kind == "model" then
    local id = handle:headers():get(":path"):match("^/v1/models/([^/?]+)")
    text = models.listed(entries, id or "", now)
    if text == nil then return refuse(handle, 404, "no model of that name for tier " .. tier_name) end
  end
  handle:respond({ [":status"] = "200", ["content-type"] = "application/json" }, text)
end

-- The capacity document (its path in T), read again every few seconds (T.capacity_seconds) by each worker:
-- the operator rewrites it as models' figures change, without a reload of Envoy's config. Unreadable:
-- nothing known.
local capacity = { lines = {}, read_at = nil }
local function capacity_lines(now)
  if capacity.read_at == nil or now - capacity.read_at >= T.capacity_seconds then
    local file = io.open(T.capacity_file, "r")
    capacity.lines = file and models.capacity_lines(file:read("*a")) or {}
    if file then file:close() end
    capacity.read_at = now
  end
  return capacity.lines
end

local function on_request(handle, now)
  local route = handle:metadata()
  local kind = route:get("kind")
  if kind == nil then return end -- health checks and unknown paths: Envoy answers them itself
  if access.credential_in_query(handle:headers():get(":path")) then
    return unauthenticated(
      handle,
      "send credentials in the Authorization or x-api-key header, never in the URL"
    )
  end
  if not screen(handle, kind) then return end
  local consumer, tier_name, why, credential, created = authenticate(handle, now)
  if consumer == nil then return unauthenticated(handle, why) end
  local unverified = credential and T.unverified[credential]
  if unverified then
    return refuse(
      handle,
      403,
      "this API key's account is not verified yet: tier " .. unverified .. " serves verified customers only"
    )
  end
  local suspended = credential and T.suspended[credential]
  if suspended then -- counted per address like any credential that does not work
    return unauthenticated(
      handle,
      "this API key is suspended (" .. suspended .. "); ask the API's operators to lift the suspension"
    )
  end
  if kind == "models" or kind == "model" then return list_models(handle, now, kind, tier_name) end
  if kind == "capacity" then
    local text = models.capacity(T.tiers[tier_name].served, capacity_lines(now))
    return handle:respond({ [":status"] = "200", ["content-type"] = "application/json" }, text)
  end
  local new_key = created ~= nil and now - created < T.new_key_seconds
  set_caller(handle, now, kind, consumer, tier_name, credential, new_key)
  if kind == "feedback" then return end -- the model it rates is in the body: body.lua reads it
  if kind == "openai" then -- its model is in the body: body.lua admits it
    handle:streamInfo():dynamicMetadata():set(NS, "start_ms", tostring(handle:timestamp()))
    return
  end
  if kind ~= "grpc" then return admit_http(handle, now, route, kind, tier_name) end
end

function envoy_on_request(handle)
  handle:headers():remove("x-tollway-cluster")
  -- what a model's OpenAI server is told of the request: only the gateway may say it
  handle:headers():remove("x-tollway-model-version")
  handle:headers():remove("x-tollway-priority")
  handle:headers():remove("x-tollway-cache")
  handle:headers():remove("x-tollway-cache-probe")
  -- Envoy sets its own on a rewrite; a client's would reach the access log as the path
  handle:headers():remove("x-envoy-original-path")
  handle:clearRouteCache() -- so the route's cluster never comes from a header the client sent
  stream.checked(handle, "tollway gateway", on_request, os.time())
end

-- What the quality signals take of an answer: whether it says its content was filtered, and for a sampled
-- request what its record keeps of it (`text`: the answer, or a stream's text put back together; nil for a
-- gRPC answer, which the record only describes; `cut`: only the start of the stream was kept).
local function observe_answer(handle, state, text, filtered, cut)
  local metadata = handle:streamInfo():dynamicMetadata()
  if filtered then metadata:set(NS, "content_filtered", "1") end
  if not state.sample then return end
  if text == nil then return metadata:set(NS, "sample_response", "(a gRPC answer, not kept)") end
  local sampling = T.tiers[state.tier].sampling
  local kept, shortened = sample.kept(text, sampling.redact, sampling.most)
  metadata:set(NS, "sample_response", kept)
  if cut or shortened then metadata:set(NS, "sample_response_cut", "1") end
end

-- The tokens the model reported: recorded for the usage counters and the access log, and, when the
-- request reserved tokens, what they exceed the reservation by is charged too (at the end of the stream; a
-- request that used no more than it reserved makes no call then).
-- A served response that reports none is charged its estimate (see tokens.settlement); an empty one or a
-- gRPC error served nothing.
local function count_tokens(handle, state, model)
  local body = handle:body()
  if body == nil or body:length() == 0 then return end
  local headers = handle:headers() -- fetched after body(): a wrapper taken before it is out of scope
  local served = (headers:get("grpc-status") or "0") == "0"
  local text = body:getBytes(0, body:length())
  observe_answer(handle, state, state.kind ~= "grpc" and text or nil, sample.filtered(text))
  local estimate = served and state.estimate or nil
  local input, output, extra, unreported = tokens.settlement(text, model, state.reserve, estimate)
  if input == nil then return end
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(NS, "input_tokens", tostring(input))
  metadata:set(NS, "output_tokens", tostring(output))
  if unreported then metadata:set(NS, "unreported", "1") end -- counted for an alert
  if extra == nil or extra == 0 then return end
  metadata:set(NS, "settle", tostring(extra))
  local remaining = tokens.remaining_after(headers:get("x-ratelimit-remaining-tokens"), extra)
  if remaining ~= nil then headers:replace("x-ratelimit-remaining-tokens", remaining) end
end

-- How a stream reports its tokens: an OpenAI stream in its server's usage comments (the last one counts);
-- Triton's generate_stream in the model's own count fields (`counts.input`, `.output`), the largest seen so
-- far (its last response carries them); ModelStreamInfer in the model's count outputs. A function of each
-- piece of the stream (with the end of the one before, and without): the counts so far, or nil.
local function usage_reader(state, counts)
  if state.kind == "openai" then return tokens.stream_usage end
  if state.kind == "grpc" then -- a count output's name, as the pattern names it (render/envoy.py)
    local function name(pattern) return pattern and (pattern:gsub("%%(%W)", "%1")) end
    local read = protobuf.stream_counts(name(counts.input), name(counts.output))
    return function(_, bytes) return read(bytes) end
  end
  local input, output = nil, nil
  return function(text)
    local found_input, found_output =
      tokens.used_tokens(text, counts.input), tokens.used_tokens(text, counts.output)
    if found_input == nil and found_output == nil then return nil end
    input, output = math.max(input or 0, found_input or 0), math.max(output or 0, found_output or 0)
    return input, output
  end
end

-- An event stream (OpenAI's, or Triton's generate_stream), passed on chunk by chunk as it comes (nothing is
-- held back): the counts it reports so far say what a caller who leaves now is charged, and the last ones
-- what the request used; the clock gives the time to the first token and per token after it. A stream that
-- reports no counts is charged its estimate, unreported.
local function follow_stream(handle, state, counts)
  local read_usage = usage_reader(state, counts)
  local first, last, tail, input, output = nil, nil, "", nil, nil
  local filtered, kept, kept_bytes, dropped = false, {}, 0, false
  local keep = state.sample and state.kind ~= "grpc" and T.tiers[state.tier].sampling.most * STREAM_OVERHEAD
    or 0
  for chunk in handle:bodyChunks() do
    local at = handle:timestamp()
    local bytes = chunk:getBytes(0, chunk:length())
    local text = tail .. bytes
    filtered = filtered or sample.filtered(text)
    if kept_bytes < keep then
      kept[#kept + 1], kept_bytes = bytes, kept_bytes + #bytes
    else
      dropped = true
    end
    local metadata = handle:streamInfo():dynamicMetadata() -- each resumption's own wrapper
    if first == nil and (state.kind == "grpc" or text:find("data:", 1, true)) then
      first = at
      metadata:set(NS, "ttft_ms", tostring(math.max(0, at - tonumber(state.start_ms or at))))
    end
    last = at
    local found_input, found_output = read_usage(text, bytes)
    if found_input ~= nil and (found_input ~= input or found_output ~= output) then
      input, output = found_input, found_output
      stream.charge_if_left(metadata, input, output, "0")
    end
    tail = text:sub(-STREAM_TAIL)
  end
  local text = keep > 0 and sample.stream_text(table.concat(kept)) or nil
  observe_answer(handle, state, text, filtered, dropped and keep > 0)
  local extra, unreported
  input, output, extra, unreported = tokens.charged(input, output, state.reserve, state.estimate)
  if input == nil then return end
  local metadata = handle:streamInfo():dynamicMetadata()
  if unreported then metadata:set(NS, "unreported", "1") end
  metadata:set(NS, "input_tokens", tostring(input))
  metadata:set(NS, "output_tokens", tostring(output))
  if output > 1 and first ~= nil and not unreported then
    metadata:set(NS, "tpot_ms", string.format("%.3f", (last - first) / (output - 1)))
  end
  if extra ~= nil and extra > 0 then metadata:set(NS, "settle", tostring(extra)) end
end

local function on_response(handle, now)
  local headers = handle:headers()
  for _, name in ipairs({ "x-ratelimit-limit", "x-ratelimit-limit-tokens" }) do
    local limit = tokens.first_number(headers:get(name))
    if limit then headers:replace(name, limit) end
  end
  local metadata = handle:streamInfo():dynamicMetadata()
  local state = metadata:get(NS) or {}
  local tier = state.tier and T.tiers[state.tier]
  local model = state.model and T.models[state.model]
  local status = headers:get(":status")
  local from_model = headers:get("x-envoy-upstream-service-time") ~= nil
  if status == "503" and from_model and model then
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
  if from_model and state.sighting then sightings.mark(state.sighting, math.floor(now / 3600)) end
  if not (from_model and state.tier) then return end
  -- The usage logger counts what a model answered a caller, and reads a number for each count.
  local counts_logged = { "input_tokens", "output_tokens", "unreported", "cached_input", "cached_output" }
  for _, count in ipairs(counts_logged) do
    metadata:set(NS, count, "0")
  end
  -- Read before the body: the headers' wrapper goes out of scope once the body is.
  local cache = state.kind == "openai" and CACHE_RESULTS[headers:get("x-tollway-cache") or ""] or nil
  if cache ~= nil then metadata:set(NS, "cache", cache) end
  -- A request the shared cache was to answer reserved nothing (its tier's hits are free): a hit is charged
  -- nothing now either; a miss after all (the answer was evicted in between) is charged every token.
  if state.expect_hit then state.reserve = cache ~= "hit" and "0" or nil end
  local counts = model and (state.kind == "openai" and model.openai or model)
  if counts and counts.input ~= nil and status == "200" then
    local event_stream = (headers:get("content-type") or ""):find("^text/event%-stream")
    if state.start_ms and (event_stream or state.kind == "grpc") then -- a stream: ModelStreamInfer's too
      follow_stream(handle, state, counts)
    else
      count_tokens(handle, state, counts)
    end
  end
  -- (A wrapper taken before count_tokens read the body is out of scope now: fetched again.)
  metadata = handle:streamInfo():dynamicMetadata()
  if cache == "hit" then -- the same tokens again, as cached ones: the tier's cached price applies to them
    local counted = metadata:get(NS) or {}
    metadata:set(NS, "cached_input", counted.input_tokens or "0")
    metadata:set(NS, "cached_output", counted.output_tokens or "0")
  end
  -- Marked last: a caller who leaves before the answer is read is counted as one who left (its estimate).
  metadata:set(NS, "from_model", "1")
end

function envoy_on_response(handle)
  local ok, failure = pcall(on_response, handle, os.time())
  if not ok then handle:logErr("tollway gateway (response): " .. tostring(failure)) end
end
