-- Tollway's gateway, second of its two Lua programs: it runs after the request-count limits, so only a
-- request whose caller is known and within those limits gets its body buffered (up to the model's
-- maxRequestBytes, the route's buffer limit). It reads the body as Triton will, writes the tier's priority
-- into it and reserves its tokens; for gRPC, whose model is named inside the body, it also resolves and
-- admits the model and routes the request. `T` (above) holds the tiers and models of gateway.lua's data;
-- the caller is what gateway.lua left in dynamic metadata.

local json = require("tollway.json")
local models = require("tollway.models")
local prompt = require("tollway.prompt")
local protobuf = require("tollway.protobuf")
local sample = require("tollway.sample")
local stream = require("tollway.stream")

local NS = stream.NS
local refuse = stream.refuse

-- How long (seconds) a prompt is remembered to tell a regeneration, and how many each worker remembers.
local REGENERATION_WINDOW, REMEMBERED_PROMPTS = 600, 2048
-- How long (ms) a model's server may take to say whether its answer cache holds a request's answer; a late
-- answer is a no (the request reserves its tokens as usual).
local CACHE_PROBE_MS = 250
local remembered = sample.recent(REGENERATION_WINDOW, REMEMBERED_PROMPTS)
math.randomseed(os.time() + math.floor(os.clock() * 1000000)) -- each worker samples its own requests

-- The quality signals of an admitted inference: whether its caller sent the same prompt to the same model
-- version a moment ago (a regeneration), and whether it is sampled (at its tier's rate, else its model's,
-- in parts per million; 0 without a sample sink), with what its record keeps of the body. `binary`: a gRPC
-- message, which a record describes only.
local function observe(handle, now, caller, model_name, version, bytes, binary)
  local metadata = handle:streamInfo():dynamicMetadata()
  if remembered(sample.prompt_key(caller.consumer, model_name, version, bytes), now) then
    metadata:set(NS, "regeneration", "1")
  end
  local sampling = T.tiers[caller.tier].sampling
  local ppm = sampling.ppm or T.models[model_name].sample_ppm
  if ppm == 0 or math.random(1000000) > ppm then return end
  metadata:set(NS, "sample", "1")
  if binary then
    return metadata:set(NS, "sample_request", "(a gRPC message of " .. #bytes .. " bytes, not kept)")
  end
  local kept, cut = sample.kept(bytes, sampling.redact, sampling.most)
  metadata:set(NS, "sample_request", kept)
  if cut then metadata:set(NS, "sample_request_cut", "1") end
end

-- A guardrail model's verdict on `text` (its check's `guard`: cluster, path, timeout, most): true (flagged)
-- or false; nil when it could not judge (too long for it, an error, a timeout: Envoy answers a failed call
-- with a 503 of its own, or an answer without FLAGGED).
local function judged(handle, guard, text)
  local request = prompt.guard_request(text)
  if #request > guard.most then return nil end
  local headers, reply = handle:httpCall(guard.cluster, {
    [":method"] = "POST",
    [":path"] = guard.path,
    [":authority"] = "guardrail",
    ["content-type"] = "application/json",
  }, request, guard.timeout)
  if headers == nil or headers[":status"] ~= "200" then return nil end
  return prompt.guard_flagged(reply)
end

-- The tier's prompt checks on a request to `model_name` whose body `bytes` is JSON for its first
-- `json_length` bytes and binary after them; read only when the tier has checks. Patterns first; the
-- guardrail models only when no pattern refused the prompt. A match is recorded for the counters and the
-- sample, so is a guardrail model that could not judge; false after refusing the request (400 for a match
-- of a refusing check, 503 when a refusing check's model could not judge it).
local function checked_prompt(handle, tier, model_name, bytes, json_length)
  if #tier.prompt == 0 then return true end
  local text = prompt.text(bytes:sub(1, json_length), bytes:sub(json_length + 1))
  local names, refusing = prompt.matches(tier.prompt, model_name, text:lower())
  local failed, unjudged = nil, nil
  for _, check in ipairs(tier.prompt) do
    if refusing or unjudged then break end
    if check.guard and prompt.applies(check, model_name) then
      local flagged = judged(handle, check.guard, text)
      if flagged == nil then
        failed = failed or check.name
        unjudged = check.refuse and check.name or nil
      elseif flagged then
        names[#names + 1] = check.name
        refusing = check.refuse and check.name or nil
      end
    end
  end
  local metadata = handle:streamInfo():dynamicMetadata() -- taken after the calls: they yield
  if failed then metadata:set(NS, "prompt_check_error", failed) end
  if #names > 0 then
    metadata:set(NS, "prompt_match", names[1])
    metadata:set(NS, "prompt_flags", table.concat(names, ","))
  end
  if unjudged then
    refuse(handle, 503, "the prompt check " .. unjudged .. " could not judge the prompt; try again")
    return false
  end
  if refusing == nil then return true end
  refuse(handle, 400, "the prompt was refused by the check " .. refusing)
  return false
end

local function grpc_request(handle, now, caller)
  local body = handle:body()
  local bytes = body and body:getBytes(0, body:length()) or ""
  local message = protobuf.unframe(bytes)
  if message == nil then return refuse(handle, 400, "send one uncompressed gRPC message") end
  local name, pinned, rest = protobuf.name_and_version(message)
  if name == nil then return refuse(handle, 400, "the request is not a protobuf message") end
  local model_name, alias = models.split_name(name)
  local model, version, status, problem = models.resolve(T.models, model_name, alias, tonumber(pinned))
  if model == nil then return refuse(handle, status, problem) end
  if #bytes > model.max_body then return stream.too_large(handle, model_name, model) end
  local tier = T.tiers[caller.tier]
  local method = handle:headers():get(":path")
  local streamed = method == "/inference.GRPCInferenceService/ModelStreamInfer"
  local infer = streamed or method == "/inference.GRPCInferenceService/ModelInfer"
  if streamed then -- its responses are passed on as they come: their time to the first
    handle:streamInfo():dynamicMetadata():set(NS, "start_ms", tostring(handle:timestamp()))
  end
  local scopes =
    stream.admit_model(handle, now, caller.tier, tier, model_name, model, version, infer, stream.AFTER_BODY)
  if scopes == nil then return end
  if infer then
    local max_tokens, unreadable = protobuf.grpc_max_tokens(rest)
    if unreadable then return refuse(handle, 400, unreadable) end
    if not checked_prompt(handle, tier, model_name, rest, 0) then return end
    if not stream.reserve_tokens(handle, tier, model_name, model, scopes, #bytes, max_tokens) then return end
    observe(handle, now, caller, model_name, version, rest, true)
    if model.usage_output then
      rest, unreadable = protobuf.with_requested_output(rest, model.usage_output)
      if rest == nil then return refuse(handle, 400, unreadable) end
    end
  end
  handle:body():setBytes( -- again: a guardrail model's call yields, and wrappers go out of scope
    protobuf.frame(protobuf.routed_request(model_name, version, rest, infer and tier.level or nil))
  )
  stream.route_to(handle, tier.grpc_clusters[model_name] or model.grpc_cluster)
end

-- Rewrite an HTTP infer body as json.routed does; the body as sent, the max_tokens it asks for, nil and the
-- length of its JSON (the rest is binary tensors); or nil, nil and why the request is refused.
local function prepare_http_infer(handle, level, usage_output, generate)
  local body = handle:body()
  if body == nil then return "" end
  local headers = handle:headers() -- fetched after body(): a wrapper taken before it is out of scope
  local bytes = body:getBytes(0, body:length())
  -- Triton's binary tensor extension: the JSON is the first Inference-Header-Content-Length bytes.
  local declared, json_length = headers:get("inference-header-content-length"), #bytes
  if declared ~= nil and generate then
    return nil, nil, "generate takes JSON only: no Inference-Header-Content-Length"
  elseif declared ~= nil then
    json_length = tonumber(declared:match("^%d+$") or "")
    if json_length == nil or json_length > #bytes then
      return nil, nil, "Inference-Header-Content-Length must be a whole number no larger than the body"
    end
  end
  local rewritten, max_tokens, problem = json.routed(bytes:sub(1, json_length), level, usage_output, generate)
  if rewritten == nil then return nil, nil, problem end
  local rest = bytes:sub(json_length + 1)
  body:setBytes(rewritten .. rest)
  headers:replace("content-length", tostring(#rewritten + #rest))
  if headers:get("inference-header-content-length") then
    headers:replace("inference-header-content-length", tostring(#rewritten))
  end
  return bytes, max_tokens, nil, json_length
end

local function http_infer(handle, now, caller)
  local tier, model = T.tiers[caller.tier], T.models[caller.model]
  local bytes, max_tokens, problem, json_length =
    prepare_http_infer(handle, tier.level, model.usage_output, caller.kind == "generate")
  if problem then return refuse(handle, 400, problem) end
  if not checked_prompt(handle, tier, caller.model, bytes, json_length or #bytes) then return end
  local scopes = tier.scopes[caller.model]
  if stream.reserve_tokens(handle, tier, caller.model, model, scopes, #bytes, max_tokens) and #bytes > 0 then
    observe(handle, now, caller, caller.model, caller.version, bytes, false)
  end
end

-- Whether the model's shared answer cache holds the answer to the OpenAI request `bytes`, as its server
-- says when only asked (204: held; anything else, a failed call included, is no): the request it precedes
-- then takes nothing from a tier's token limits whose hits are free.
local function cache_holds(handle, api, version, bytes)
  local headers = handle:httpCall(api.cluster, {
    [":method"] = "POST",
    [":path"] = api.path,
    [":authority"] = "openai",
    ["content-type"] = "application/json",
    ["x-tollway-model-version"] = tostring(version),
    ["x-tollway-cache-probe"] = "1",
  }, bytes, CACHE_PROBE_MS)
  return headers ~= nil and headers[":status"] == "204"
end

-- An OpenAI API request names its model in the body: resolved, admitted, limited and routed here, to the
-- model's OpenAI server, which is told the version and the tier's priority in headers (gateway.lua drops
-- any a client sent).
local function openai_request(handle, now, caller)
  local body = handle:body()
  local bytes = body and body:getBytes(0, body:length()) or ""
  local asked, unreadable = json.openai(bytes)
  if asked == nil then return refuse(handle, 400, unreadable) end
  local model_name, alias, pinned = models.reference(asked.model)
  local model, version, status, problem = models.resolve(T.models, model_name, alias, pinned)
  if model == nil then return refuse(handle, status, problem) end
  local api = model.openai
  if api == nil then
    return refuse(
      handle,
      404,
      "model " .. model_name .. " is served on /v1/models/" .. model_name .. "/infer only"
    )
  end
  local headers = handle:headers() -- fetched after body(): a wrapper taken before it is out of scope
  if headers:get(":path") ~= api.path then
    return refuse(handle, 400, "model " .. model_name .. " answers " .. api.path)
  end
  if #bytes > model.max_body then return stream.too_large(handle, model_name, model) end
  local tier = T.tiers[caller.tier]
  local scopes =
    stream.admit_model(handle, now, caller.tier, tier, model_name, model, version, true, stream.AFTER_BODY)
  if scopes == nil then return end
  local max_tokens = api.kind ~= "embedding" and asked.max_tokens or nil
  if not checked_prompt(handle, tier, model_name, bytes, #bytes) then return end
  local cached = nil -- asked only when the tier's hits are free, of a cache every replica shares
  if tier.hits_free and api.shared_cache and not tier.cache_off then
    cached = function() return cache_holds(handle, api, version, bytes) end
  end
  if not stream.reserve_tokens(handle, tier, model_name, api, scopes, #bytes, max_tokens, cached) then
    return
  end
  observe(handle, now, caller, model_name, version, bytes, false)
  headers = handle:headers() -- again: a guardrail model's call yields, and wrappers go out of scope
  headers:replace("x-tollway-model-version", tostring(version))
  headers:replace("x-tollway-priority", tostring(tier.level))
  if tier.cache_off then headers:replace("x-tollway-cache", "off") end -- the tier opted out of caches
  stream.route_to(handle, tier.openai_clusters[model_name] or api.cluster)
end

-- POST /v1/feedback: a consumer's rating of an answer, for a model version its tier may use; counted
-- against the tier's request limits, then answered by its route (202) and recorded by the access loggers.
local function feedback(handle, caller)
  local body = handle:body()
  local said, unreadable = json.feedback(body and body:getBytes(0, body:length()) or "")
  if said == nil then return refuse(handle, 400, unreadable) end
  local model_name, alias, pinned = models.reference(said.model)
  local model, version, status, problem = models.resolve(T.models, model_name, alias, pinned)
  if model == nil then return refuse(handle, status, problem) end
  local tier = T.tiers[caller.tier]
  if not stream.may_use(handle, caller.tier, tier, model_name, version) then return end
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(NS, "feedback_rating", said.rating)
  metadata:set(NS, "feedback_for", said.request_id)
  if said.comment then
    metadata:set(
      NS,
      "feedback_comment",
      (sample.kept(said.comment, tier.sampling.redact, tier.sampling.most))
    )
  end
  stream.count_request(handle, tier, tier.scopes[model_name])
end

local function on_request(handle, now)
  -- What gateway.lua let through says what it is; a request it answered never gets here.
  local caller = handle:streamInfo():dynamicMetadata():get(NS)
  if caller == nil then return end
  -- a caller without a valid credential, within its address's limit: gateway.lua left its answer here
  if caller.refused then return stream.unauthenticated(handle, caller.refused) end
  if caller.kind == nil then return end
  if caller.kind == "grpc" and caller.tier ~= nil then return grpc_request(handle, now, caller) end
  if caller.kind == "infer" or caller.kind == "generate" then return http_infer(handle, now, caller) end
  if caller.kind == "openai" then return openai_request(handle, now, caller) end
  if caller.kind == "feedback" then return feedback(handle, caller) end
  -- Readiness, metadata and gRPC's server methods: read, so that their routes' small limit bounds what
  -- reaches Triton (413 beyond it); over HTTP they take no body at all.
  local body = handle:body()
  if caller.kind ~= "grpc" and body ~= nil and body:length() > 0 then
    return refuse(handle, 400, "this request takes no body")
  end
end

function envoy_on_request(handle) stream.checked(handle, "tollway gateway (body)", on_request, os.time()) end
