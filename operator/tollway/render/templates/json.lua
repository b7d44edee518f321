-- KServe v2 JSON request bodies, read only as far as the gateway needs: the top-level "parameters" object,
-- the max_tokens it asks for, and the tier's priority written into it. Pure string functions.

local M = {}

-- The position of the quote that closes the string opened at `open`, or nil when the string never closes.
local function closing_quote(json, open)
  local at = open + 1
  while true do
    at = json:find('["\\]', at)
    if at == nil then return nil end
    if json:sub(at, at) ~= "\\" then return at end
    at = at + 2
  end
end

-- The position of the brace that closes the object opened at `open`, or nil when it never closes.
local function closing_brace(json, open)
  local depth, at = 0, open
  while true do
    at = json:find('[{}"]', at)
    if at == nil then return nil end
    if json:sub(at, at) == '"' then
      at = closing_quote(json, at)
      if at == nil then return nil end
    else
      depth = depth + (json:sub(at, at) == "{" and 1 or -1)
      if depth == 0 then return at end
    end
    at = at + 1
  end
end

-- The span of the top-level "parameters" object ({ and } positions), or nil.
function M.top_level_parameters(json)
  local depth, position = 0, 1
  while true do
    local at = json:find('[{}%[%]"]', position)
    if at == nil then return nil end
    local char = json:sub(at, at)
    if char == '"' then
      local close = closing_quote(json, at)
      if close == nil then return nil end
      if depth == 1 and json:sub(at + 1, close - 1) == "parameters" then
        local open = json:match("^%s*:%s*(){", close + 1)
        if open == nil then return nil end
        local stop = closing_brace(json, open)
        if stop == nil then return nil end
        return open, stop
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
function M.requested_max_tokens(parameters)
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
function M.with_priority(json, level)
  local open, close = M.top_level_parameters(json)
  local setting = '"priority":' .. level
  if open == nil then
    local brace = json:find("{", 1, true)
    if brace == nil then return json end
    local empty = json:match("^%s*}", brace + 1) ~= nil
    return json:sub(1, brace)
      .. '"parameters":{'
      .. setting
      .. "}"
      .. (empty and "" or ",")
      .. json:sub(brace + 1)
  end
  local max_tokens, problem = M.requested_max_tokens(json:sub(open, close))
  if problem then return nil, nil, problem end
  local empty = json:match("^%s*}", open + 1) ~= nil
  return json:sub(1, open) .. setting .. (empty and "" or ",") .. json:sub(open + 1), max_tokens
end

return M
