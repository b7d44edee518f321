-- Runs between the request and the token rate-limit filters: on the way out it renames the X-RateLimit-*
-- headers that the token filter added, so that the request filter's headers (added after this) keep the
-- plain names and both sets reach the client.
--
-- A reply Envoy makes itself passes every filter on the way out, even when a filter before this one made it
-- (a 429 of the request limit): then the request was never here and the headers are the request filter's.
function envoy_on_request(handle)
  handle:streamInfo():dynamicMetadata():set("tollway", "token_filter_reached", "1")
end

function envoy_on_response(handle)
  local state = handle:streamInfo():dynamicMetadata():get("tollway")
  if state == nil or state.token_filter_reached == nil then return end
  local headers = handle:headers()
  for _, name in ipairs({ "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset" }) do
    local value = headers:get(name)
    if value ~= nil then
      headers:remove(name)
      headers:replace(name .. "-tokens", value)
    end
  end
end
