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

-- Query parameters that carry a credential: refused, since URLs end up in logs, histories and referrers.
local CREDENTIAL_PARAMETERS = {
  ["access_token"] = true,
  ["api-key"] = true,
  ["api_key"] = true,
  ["apikey"] = true,
  ["authorization"] = true,
  ["key"] = true,
  ["token"] = true,
  ["x-api-key"] = true,
}

-- Whether a request path's query names a credential parameter (percent-escapes decoded, any case).
function M.credential_in_query(path)
  local query = (path or ""):match("%?(.*)$")
  if query == nil then return false end
  for name in ("&" .. query):gmatch("&([^=&]*)") do
    local decoded = name:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end)
    if CREDENTIAL_PARAMETERS[decoded:lower()] then return true end
  end
  return false
end

-- Whether a SAN matches a tier's pattern: exactly, or, for a pattern ending in "*", as a SAN below the
-- pattern's prefix in whole path segments ("spiffe://a.test/*" and "spiffe://a.test*" both take
-- "spiffe://a.test/x", never "spiffe://a.test.evil/x").
function M.san_matches(pattern, san)
  if pattern:sub(-1) ~= "*" then return san == pattern end
  local prefix = pattern:sub(1, -2)
  if prefix:sub(-1) == "/" then return #san > #prefix and san:sub(1, #prefix) == prefix end
  return san == prefix or san:sub(1, #prefix + 1) == prefix .. "/"
end

-- The first of a certificate's SANs that one of a tier's patterns allows, or nil.
function M.allowed_san(patterns, sans)
  for _, san in ipairs(sans) do
    for _, pattern in ipairs(patterns) do
      if M.san_matches(pattern, san) then return san end
    end
  end
  return nil
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
  local patterns = T.tiers[tier_name].mtls
  if #patterns == 0 then return "cert:" .. (sans[1] or subject), tier_name end -- any the CA signed
  -- the consumer is the SAN the tier allowed, so a certificate cannot pick its counters by its SAN order
  local allowed = M.allowed_san(patterns, sans)
  if allowed == nil then return nil, nil, "client certificate not allowed for tier " .. tier_name end
  return "cert:" .. allowed, tier_name
end

-- The payloads jwt_authn verified, by tier name: tiers are tried in priority order. Only a string or a
-- number names a consumer. Nothing at all when no tier's token was verified (the caller may still present
-- an API key).
function M.token_caller(T, verified)
  if verified == nil then return nil end
  local why = nil
  for _, name in ipairs(T.order) do
    local payload, jwt = verified[name], T.tiers[name].jwt
    if payload ~= nil and jwt ~= nil then
      local claim = payload[jwt.claim]
      if not M.has_scopes(payload, jwt.scopes) then
        why = why or "token lacks a required scope"
      elseif (type(claim) == "string" and claim ~= "") or type(claim) == "number" then
        return "jwt:" .. tostring(claim), name
      else -- an array or object would name a new consumer on every request
        why = why or "the token's consumer claim must be a string or a number"
      end
    end
  end
  return nil, nil, why
end

function M.key_caller(credentials, key, now)
  if key == nil then
    return nil, nil, "missing credential: send Authorization: Bearer KEY or x-api-key: KEY"
  end
  local credential = credentials[key]
  if credential == nil then return nil, nil, "invalid API key or token" end
  if credential.expires ~= nil and now >= credential.expires then return nil, nil, "API key expired" end
  return credential.consumer, credential.tier, nil, credential.id, credential.created
end

-- The network of a client address as Envoy writes it ("203.0.113.9:41000", "[2001:db8::1]:41000"), in a
-- form whose characters the ratelimit service's statistic names keep (no dots): "203-0-113-0_24" (/24), or
-- "2001-db8-0_48" (/48, its first three groups). nil for anything else (then nothing is counted).
function M.network_of(address)
  local v4 = (address or ""):match("^(%d+%.%d+%.%d+)%.%d+:%d+$")
  if v4 then return (v4:gsub("%.", "-")) .. "-0_24" end
  local v6 = (address or ""):match("^%[([%x:]+)%]:%d+$")
  if v6 == nil then return nil end
  local head, tail = v6:match("^(.-)::(.*)$")
  local groups = {}
  for group in (head or v6):gmatch("[^:]+") do
    groups[#groups + 1] = group
  end
  if head ~= nil then -- "::" stands for the zero groups the address leaves out
    local after = {}
    for group in tail:gmatch("[^:]+") do
      after[#after + 1] = group
    end
    for _ = 1, 8 - #groups - #after do
      groups[#groups + 1] = "0"
    end
  end
  if #groups < 3 then return nil end
  local kept = {}
  for index = 1, 3 do
    kept[index] = (groups[index]:lower():gsub("^0+(%x)", "%1"))
  end
  return table.concat(kept, "-") .. "_48"
end

-- What the key-compromise signals count of a User-Agent header: its first product token, cut to 48
-- characters: enough to tell one client program from another, while no caller can make the ratelimit
-- service keep long values. "none" without one.
function M.agent_product(user_agent)
  local product = (user_agent or ""):match("^[%w%._/%-]+")
  if product == nil then return "none" end
  return product:sub(1, 48)
end

-- A worker's memory of the key signals it sent this hour, at most `capacity` of them: `seen(key, hour)`
-- says whether `mark(key, hour)` was called for `key` in `hour`. The gateway marks a sighting once a request
-- that carried it was answered by the model (so it passed the stream-end filter that sends it), and sends no
-- more of it that hour: the ratelimit service would count it again as seen (its windows are the same clock
-- hours; a few seconds' skew between the two clocks can lose a sighting at an hour's turn). Past `capacity`
-- (a caller cycling through addresses or agents) nothing more is marked: nothing goes uncounted.
function M.sightings(capacity)
  local hour, marked, count = nil, {}, 0
  local function in_hour(now_hour)
    if now_hour ~= hour then
      hour, marked, count = now_hour, {}, 0
    end
  end
  return {
    seen = function(key, now_hour)
      in_hour(now_hour)
      return marked[key] == true
    end,
    mark = function(key, now_hour)
      in_hour(now_hour)
      if not marked[key] and count < capacity then
        marked[key], count = true, count + 1
      end
    end,
  }
end

-- A consumer or tier name as the ratelimit service's counters carry it (as ir/names.py's counter_name writes
-- it): their statistics are dot-separated paths, so '%' and '.' are percent-encoded.
function M.counter_name(name) return (name:gsub("%%", "%%25"):gsub("%.", "%%2E")) end

return M
