-- What both of the gateway's programs do to the request's stream: refuse it, route it, and leave in dynamic
-- metadata what the filters after them read. Each function takes Envoy's `handle` and the tables of `T` it
-- needs as arguments; none reads `T` or the clock itself.

local models = require("tollway.models")
local tokens = require("tollway.tokens")

local M = {}

local NS = "tollway"
M.NS = NS

-- Limits that count requests: checked before the body is read wherever the request's model is known from its
-- headers (HTTP); gRPC names its model inside the body, so its request limits go to filters after it.
local REQUEST_KINDS = { rpm = true, rpd = true }
M.AFTER_BODY = "_grpc"
-- The token limits' scopes as the filters that check a reservation read them (`tpm_reserved_closed`, ...),
-- set with the reservation; admit_model's plain ones (`tpm_closed`) are what the settlement charges.
local TOKEN_KINDS, RESERVED = { "tpm", "tpd" }, "_reserved"

-- The suffix of a tier's limit scopes in metadata: which of the two filters of a kind counts them.
local function limit_mode(tier) return tier.fail_open and "_open" or "_closed" end

function M.refuse(handle, status, message, headers)
  local all = { [":status"] = tostring(status) }
  for name, value in pairs(headers or {}) do
    all[name] = value
  end
  handle:respond(all, message)
end

-- Run `step(handle, now)`; a failure inside it is logged (as `program`'s) and answered 500: a request the
-- program did not finish checking never passes.
function M.checked(handle, program, step, now)
  local ok, failure = pcall(step, handle, now)
  if not ok then
    handle:logErr(program .. ": " .. tostring(failure))
    M.refuse(handle, 500, "the gateway could not process this request")
  end
end

function M.unauthenticated(handle, why)
  M.refuse(handle, 401, why, { ["www-authenticate"] = 'Bearer realm="tollway"' })
end

-- Send the request to `cluster` (the router reads x-tollway-cluster), without the caller's credential.
function M.route_to(handle, cluster)
  local headers = handle:headers()
  headers:remove("authorization")
  headers:remove("x-api-key")
  headers:replace("x-tollway-cluster", cluster)
  handle:clearRouteCache()
end

-- The model checks of a request whose caller is known, HTTP or gRPC: the version's sunset, the tier's access,
-- then the metadata its limit filters read (`limited`: a request that counts; `stage`: "" for the filters
-- before the body, M.AFTER_BODY for those after it). The tier's limit scopes for the model, or nil after
-- refusing the request.
function M.admit_model(handle, now, tier_name, tier, model_name, model, version, limited, stage)
  local switched_off = models.switched_off(model.versions[version], now)
  if switched_off then return M.refuse(handle, 410, switched_off) end
  if not M.may_use(handle, tier_name, tier, model_name, version) then return end
  local scopes = tier.scopes[model_name]
  if limited then
    local mode = limit_mode(tier)
    local metadata = handle:streamInfo():dynamicMetadata()
    -- what hold.lua may hold: a request that counts, by a known caller
    if model.holds then metadata:set(NS, "inference", "1") end
    for limit, scope in pairs(scopes) do
      metadata:set(NS, limit .. (REQUEST_KINDS[limit] and stage or "") .. mode, scope)
    end
  end
  return scopes
end

-- Whether the tier may use the model's version (the model and version are recorded either way); false after
-- refusing the request.
function M.may_use(handle, tier_name, tier, model_name, version)
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set(NS, "model", model_name)
  metadata:set(NS, "version", tostring(version))
  if tier.allowed[model_name .. "@" .. version] then return true end
  M.refuse(handle, 403, "tier " .. tier_name .. " may not use " .. model_name .. " version " .. version)
  return false
end

-- Count a request that is no inference (feedback) against the tier's request limits only, in the filters
-- after the body.
function M.count_request(handle, tier, scopes)
  local mode = limit_mode(tier)
  local metadata = handle:streamInfo():dynamicMetadata()
  for limit in pairs(REQUEST_KINDS) do
    if scopes[limit] then metadata:set(NS, limit .. M.AFTER_BODY .. mode, scopes[limit]) end
  end
end

-- Charge a request of `body_length` bytes before it runs (the token filters read the reservation); false
-- after refusing one that could never fit the tier's token limit. `cached`, when the tier's hits are free
-- of its token limits: a function that says whether the model's answer cache holds the answer (it yields);
-- a request it holds reserves nothing, and is marked `expect_hit` for the response to settle.
function M.reserve_tokens(handle, tier, model_name, model, scopes, body_length, max_tokens, cached)
  local reserve, problem = tokens.reservation(tier, model_name, model, scopes, body_length, max_tokens)
  if reserve == false then
    M.refuse(handle, 429, problem)
    return false
  end
  local held = reserve ~= nil and cached ~= nil and cached()
  local metadata = handle:streamInfo():dynamicMetadata() -- taken after the call: it yields
  if model.input ~= nil then -- what a response that reports no usage, or a caller who leaves, is charged
    local estimate = tostring(tokens.estimate(model, body_length, max_tokens))
    metadata:set(NS, "estimate", estimate)
    M.charge_if_left(metadata, 0, estimate, "1")
  end
  if held then -- the token filters skip it: no scope of theirs is set
    metadata:set(NS, "expect_hit", "1")
    return true
  end
  local mode = limit_mode(tier)
  for _, limit in ipairs(TOKEN_KINDS) do
    if scopes[limit] then metadata:set(NS, limit .. RESERVED .. mode, scopes[limit]) end
  end
  if reserve ~= nil then metadata:set(NS, "reserve", tostring(reserve)) end
  return true
end

-- What a caller who leaves before the answer ends is charged (the usage logger of abandoned requests reads
-- it): `unreported` "1" while it is an estimate, "0" once the model's counts are known.
function M.charge_if_left(metadata, input, output, unreported)
  metadata:set(NS, "left_input", tostring(input))
  metadata:set(NS, "left_output", tostring(output))
  metadata:set(NS, "left_unreported", unreported)
end

function M.too_large(handle, model_name, model)
  M.refuse(handle, 413, "a request to " .. model_name .. " may carry at most " .. model.max_body .. " bytes")
end

return M
