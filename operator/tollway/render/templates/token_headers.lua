-- Runs between the request and the token rate-limit filters: on the way out it renames the X-RateLimit-*
-- headers that the token filter added, so that the request filter's headers (added after this) keep the
-- plain names and both sets reach the client.
function envoy_on_request(handle)
end

function envoy_on_response(handle)
  local headers = handle:headers()
  for _, name in ipairs({ "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset" }) do
    local value = headers:get(name)
    if value ~= nil then
      headers:remove(name)
      headers:replace(name .. "-tokens", value)
    end
  end
end
