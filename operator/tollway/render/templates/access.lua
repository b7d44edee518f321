-- Who is calling: the consumer and tier of an mTLS client certificate, a verified JWT or an API key, from
-- the facts the shim reads off the request. Pure functions of those facts, the data `T` and the clock `now`.
--
-- Each returns the consumer, the tier name, nil, and the API key's Secret when a key was used; or nil, nil
-- and why not. Consumers of JWT and mTLS are prefixed ("jwt:", "cert:"), so they never share an API-key
-- consumer's counters.

local M = {}

-- The API key of an `Authorization: Bearer KEY` header, else of x-api-key; nil without either.
function M.presented_key(authorization, api_key)
  if authorization then
    local token = authorization:match("^[Bb]earer%s+(%S+)%s*$")
    if token then return token end
  end
  return api_key
end

-- Whether one of a certificate's SANs matches one of a tier's patterns (a trailing * matches any rest).
function M.san_allowed(patterns, sans)
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

-- Whether a JWT payload grants every required scope ("scope" or "scp", a string of words or a list).
function M.has_scopes(payload, required)
  if #required == 0 then return true end
  local granted = {}
  local scope = payload["scope"] or payload["scp"]
  if type(scope) == "string" then
    for word in scope:gmatch("%S+") do
      granted[word] = true
    end
  elseif type(scope) == "table" then
    for _, word in ipairs(scope) do
      granted[word] = true
    end
  end
  for _, word in ipairs(required) do
    if not granted[word] then return false end
  end
  return true
end

-- A client certificate presented on `local_address` ("ip:port"): each mTLS tier has a listener (port) of
-- its own that trusts only that tier's CA.
function M.certificate_caller(T, local_address, validated, sans, subject)
  local tier_name = T.mtls_ports[(local_address or ""):match(":(%d+)$") or ""]
  if tier_name == nil or not validated then return nil, nil, "no valid client certificate for this port" end
  if not M.san_allowed(T.tiers[tier_name].mtls, sans) then
    return nil, nil, "client certificate not allowed for tier " .. tier_name
  end
  return "cert:" .. (sans[1] or subject), tier_name
end

-- The payloads jwt_authn verified, by tier name: tiers are tried in priority order. Nothing at all when no
-- tier's token was verified (the caller may still present an API key).
function M.token_caller(T, verified)
  if verified == nil then return nil end
  local scopes_missing = false
  for _, name in ipairs(T.order) do
    local payload, jwt = verified[name], T.tiers[name].jwt
    if payload ~= nil and jwt ~= nil then
      if M.has_scopes(payload, jwt.scopes) and payload[jwt.claim] ~= nil then
        return "jwt:" .. tostring(payload[jwt.claim]), name
      end
      scopes_missing = true
    end
  end
  if scopes_missing then return nil, nil, "token lacks a required scope or the consumer claim" end
  return nil
end

function M.key_caller(credentials, key, now)
  if key == nil then
    return nil, nil, "missing credential: send Authorization: Bearer KEY or x-api-key: KEY"
  end
  local credential = credentials[key]
  if credential == nil then return nil, nil, "invalid API key or token" end
  if credential.expires ~= nil and now >= credential.expires then return nil, nil, "API key expired" end
  return credential.consumer, credential.tier, nil, credential.id
end

return M
