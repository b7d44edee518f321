-- Tollway's gateway, the hold: a program of its own, in the filter chain only when a model scales to zero.
-- It runs once a request has passed all its limits (requests and tokens), and holds only inference by a
-- known caller: a request routed to a model that has no ready replica (scaled to zero, or waking) waits here,
-- a second at a time, until the cluster it is routed to has one; each wait is one request to the
-- `hold|MODEL|TIER` cluster of its model and its caller's tier (Envoy's internal listener answers it a second
-- late), whose circuit breaker bounds how many of the tier's wait at once and whose active requests are the
-- signal that wakes the model. Beyond the hold's time or count: 503 with Retry-After, the model's expected
-- wake time less what has passed of it. `T` (above): `models` (name to holds: tier to cluster; hold_ms,
-- wake_seconds) and `clusters` (each cluster of those models to its model and the protocol it is checked in).

local stream = require("tollway.stream")

local NS = stream.NS

-- How long (ms) a cluster found ready is believed without asking again (per worker), and the most a check
-- may take: a check costs a call, so a model that is up is asked only every few seconds.
local READY_FOR_MS, CHECK_MS, WAIT_MS = 2000, 1000, 5000
-- The shortest Retry-After (s) while a wake runs late: clients are not asked back every second.
local LATE_RETRY_S = 5

-- How each kind of cluster says that it has a ready replica. Envoy answers a call to a cluster without a
-- host itself (503 "no healthy upstream"), so a 200 says both that Envoy has a host and that it is ready:
-- Triton's readiness over HTTP and over gRPC (ServerReady, an empty message; the answer `ready: true`), the
-- OpenAI server's (it asks Triton whether the model is ready).
local CHECKS = {
  http = { headers = { [":method"] = "GET", [":path"] = "/v2/health/ready" }, body = "" },
  grpc = {
    headers = {
      [":method"] = "POST",
      [":path"] = "/inference.GRPCInferenceService/ServerReady",
      ["content-type"] = "application/grpc",
      ["te"] = "trailers",
    },
    body = "\0\0\0\0\0",
    ready = "\0\0\0\0\2\8\1",
  },
  openai = { headers = { [":method"] = "GET", [":path"] = "/healthz" }, body = "" },
}
for _, check in pairs(CHECKS) do
  check.headers[":authority"] = "tollway-hold"
end
local WAIT = { [":method"] = "GET", [":path"] = "/", [":authority"] = "tollway-hold" }

-- A call's answer, or nil where Envoy refuses to make it: listeners and clusters reload from two files, so
-- for a moment after a change a listener may name a cluster that Envoy does not have yet (a request then
-- waits a second and asks again, as for a model without a ready replica, instead of failing).
local function call(handle, cluster, headers, body, timeout_ms)
  local ok, answer, answer_body = pcall(handle.httpCall, handle, cluster, headers, body, timeout_ms)
  if ok then return answer, answer_body end
  handle:logErr("tollway gateway (hold): " .. tostring(answer))
  return nil
end

local ready_until = {} -- cluster to when this worker stops believing it ready (ms)
local waking_since = {} -- model to when this worker first found it without a ready replica (ms)
local last_waking = {} -- model to when this worker last found it so (ms)

-- "ready"; "busy": it has a replica that could not answer now (the cluster's limit reached, or the check
-- ran out of time: over gRPC Envoy's answer to that is a 200 with a grpc-status, so the time tells), and the
-- request goes on as to any model; or "waking": no ready replica. With the time of the answer.
local function readiness(handle, cluster, protocol)
  local asked = handle:timestamp()
  if (ready_until[cluster] or 0) > asked then return "ready", asked end
  local check = CHECKS[protocol]
  local headers, body = call(handle, cluster, check.headers, check.body, CHECK_MS)
  local answered = handle:timestamp()
  if headers == nil then return "waking", answered end
  if headers[":status"] == "200" and (check.ready == nil or body == check.ready) then
    ready_until[cluster] = answered + READY_FOR_MS
    return "ready", answered
  end
  if headers["x-envoy-overloaded"] ~= nil or answered - asked >= CHECK_MS then return "busy", answered end
  return "waking", answered
end

-- This worker's record of the model's wake: a sighting longer ago than the wake itself was another wake's.
local function record_waking(model_name, hold, now)
  if waking_since[model_name] == nil or now - last_waking[model_name] > hold.wake_seconds * 1000 then
    waking_since[model_name] = now
  end
  last_waking[model_name] = now
end

-- 503 with the seconds left of the model's expected wake (at least LATE_RETRY_S, or the wake if shorter).
local function turn_away(handle, model_name, hold, why)
  local now = handle:timestamp()
  -- (a request on this worker may have found the model ready while this one waited)
  local waited = (now - (waking_since[model_name] or now)) / 1000
  local shortest = math.min(LATE_RETRY_S, hold.wake_seconds)
  local left = math.max(shortest, math.ceil(hold.wake_seconds - waited))
  stream.refuse(
    handle,
    503,
    "model "
      .. model_name
      .. " is starting (it had scaled to zero) and "
      .. why
      .. "; try again in "
      .. left
      .. " s",
    { ["retry-after"] = tostring(left) }
  )
end

-- After a hold: how long it was (for the access log), and a stream's time to its first token counted from
-- now, so that a wake is not taken for a slow model (the TTFT signal would scale it out).
local function record_hold(handle, started)
  local metadata = handle:streamInfo():dynamicMetadata()
  local now = handle:timestamp()
  metadata:set(NS, "held_ms", tostring(now - started))
  if (metadata:get(NS) or {}).start_ms ~= nil then metadata:set(NS, "start_ms", tostring(now)) end
end

local function on_request(handle)
  local cluster = handle:headers():get("x-tollway-cluster")
  local routed = cluster and T.clusters[cluster]
  local marked = handle:streamInfo():dynamicMetadata():get(NS) or {}
  if routed == nil or marked.inference == nil then return end
  local model_name, hold = routed.model, T.models[routed.model]
  -- (a request marked inference has passed its tier's check that it may call the model, so it has a hold)
  local held_in = hold.holds[marked.tier]
  local started, waited = handle:timestamp(), false
  while true do
    local state, now = readiness(handle, cluster, routed.protocol)
    if state ~= "waking" then break end
    record_waking(model_name, hold, now)
    if now - started >= hold.hold_ms then
      return turn_away(handle, model_name, hold, "no replica was ready in time")
    end
    if held_in == nil then
      return turn_away(handle, model_name, hold, "the hold keeps no room for its tier")
    end
    local headers = call(handle, held_in, WAIT, "", WAIT_MS)
    if headers == nil or headers[":status"] ~= "204" then
      local full = headers ~= nil and headers["x-envoy-overloaded"] ~= nil -- the breaker's: the room is full
      local status = headers and headers[":status"] or "none"
      local why = full and "as many of your tier's requests as it holds are waiting"
        or ("the gateway could not hold it (status " .. status .. ")")
      return turn_away(handle, model_name, hold, why)
    end
    waited = true
  end
  waking_since[model_name] = nil
  if waited then record_hold(handle, started) end
end

function envoy_on_request(handle) stream.checked(handle, "tollway gateway (hold)", on_request) end
