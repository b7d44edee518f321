-- KServe v2 JSON request bodies, read the way Triton reads them or refused: the top-level object's members,
-- its "parameters" object, the max_tokens it asks for, the tier's priority written into it, and the model's
-- usage output added to the "outputs" it lists. Pure string functions.
--
-- Canonical reading: where two readers of the same JSON could disagree, the body is refused. So the keys of
-- the top-level object and of "parameters" may hold no escape sequence ("param\u0065ters" is "parameters"
-- to Triton) and appear once (Triton reads the first of duplicate keys, Python's json the last), the body
-- is one object with nothing after it, and "parameters" is an object. Values are skipped, not decoded:
-- brackets inside strings never count, and a body that is not JSON is refused here or by Triton.

local M = {}

local NOT_JSON = "the request body is not a JSON object"

local function skip_space(json, at) return json:match("^[ \t\n\r]*()", at) end

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

-- The position after the JSON value that starts at `at`, or nil when it is cut short or is not a value.
local function value_end(json, at)
  local char = json:sub(at, at)
  if char == '"' then
    local close = closing_quote(json, at)
    return close and close + 1
  end
  if char ~= "{" and char ~= "[" then return json:match("^[%w%.%+%-]+()", at) end -- number, true, false, null
  local depth = 0
  while true do
    at = json:find('[%[%]{}"]', at)
    if at == nil then return nil end
    char = json:sub(at, at)
    if char == '"' then
      at = closing_quote(json, at)
      if at == nil then return nil end
    elseif char == "{" or char == "[" then
      depth = depth + 1
    else
      depth = depth - 1
      if depth == 0 then return at + 1 end
    end
    at = at + 1
  end
end

-- The members of the object whose brace is at `open`, each {key, start, value_start, value_stop} (stop
-- exclusive), and the position after its closing brace; or nil and why the object is refused.
local function members(json, open, where)
  local found, seen = {}, {}
  local at = skip_space(json, open + 1)
  if json:sub(at, at) == "}" then return found, at + 1 end
  while true do
    if json:sub(at, at) ~= '"' then return nil, NOT_JSON end
    local close = closing_quote(json, at)
    if close == nil then return nil, NOT_JSON end
    local key = json:sub(at + 1, close - 1)
    if key:find("\\", 1, true) then
      return nil, "escape sequences are not accepted in the keys of " .. where
    end
    if seen[key] then
      -- named only when it is a plain word: the message goes into a JSON reply unescaped
      return nil, (key:match("^[%w_.-]+$") or "a key") .. " appears twice in " .. where
    end
    seen[key] = true
    local colon = skip_space(json, close + 1)
    if json:sub(colon, colon) ~= ":" then return nil, NOT_JSON end
    local value_start = skip_space(json, colon + 1)
    local value_stop = value_end(json, value_start)
    if value_stop == nil then return nil, NOT_JSON end
    found[#found + 1] = { key = key, start = at, value_start = value_start, value_stop = value_stop }
    at = skip_space(json, value_stop)
    local char = json:sub(at, at)
    if char == "}" then return found, at + 1 end
    if char ~= "," then return nil, NOT_JSON end
    at = skip_space(json, at + 1)
  end
end

-- The values of the array whose bracket is at `open`, each {start, stop} (stop exclusive); nil when it is
-- not a JSON array.
local function elements(json, open)
  local found = {}
  local at = skip_space(json, open + 1)
  if json:sub(at, at) == "]" then return found end
  while true do
    local stop = value_end(json, at)
    if stop == nil then return nil end
    found[#found + 1] = { start = at, stop = stop }
    at = skip_space(json, stop)
    local char = json:sub(at, at)
    if char == "]" then return found end
    if char ~= "," then return nil end
    at = skip_space(json, at + 1)
  end
end

-- The names of the outputs a request lists (the "name" of each object in its "outputs" array), and the list;
-- nil and why when the list or a name could be read two ways, or the usage output comes with parameters.
local function output_names(json, outputs, usage_output)
  if json:sub(outputs.value_start, outputs.value_start) ~= "[" then
    return nil, "outputs must be a JSON array"
  end
  local listed = elements(json, outputs.value_start)
  if listed == nil then return nil, NOT_JSON end
  local names = {}
  for _, output in ipairs(listed) do
    if json:sub(output.start, output.start) ~= "{" then return nil, "each output must be a JSON object" end
    local found, problem = members(json, output.start, "an output")
    if found == nil then return nil, problem end
    local name, parameters = nil, false
    for _, member in ipairs(found) do
      if member.key == "name" then
        name = json:sub(member.value_start + 1, member.value_stop - 2)
        if json:sub(member.value_start, member.value_start) ~= '"' or name:find("\\", 1, true) then
          return nil, "an output name must be a string without escape sequences"
        end
      end
      parameters = parameters or member.key == "parameters"
    end
    names[#names + 1] = name
    if name == usage_output and parameters then
      -- a classification or a shared-memory region would keep the usage text out of the reply
      return nil, "the output " .. name .. " takes no parameters"
    end
  end
  return names, nil, listed
end

-- The request as the gateway reads it: {open, members, parameters (the member, if any), parameter_members,
-- outputs (the member, if any)}; or nil and why it is refused.
function M.request(json)
  local open = skip_space(json, 1)
  if json:sub(open, open) ~= "{" then return nil, NOT_JSON end
  local top, stop = members(json, open, "the request")
  if top == nil then return nil, stop end
  if skip_space(json, stop) <= #json then return nil, "the request body holds more than one JSON value" end
  local request = { open = open, members = top }
  for _, member in ipairs(top) do
    if member.key == "parameters" then
      if json:sub(member.value_start, member.value_start) ~= "{" then
        return nil, "parameters must be a JSON object"
      end
      local inner, problem = members(json, member.value_start, "parameters")
      if inner == nil then return nil, problem end
      request.parameters, request.parameter_members = member, inner
    elseif member.key == "outputs" then
      request.outputs = member
    end
  end
  return request
end

-- A parameters member's max_tokens, or nil and an error when it is not a whole number as JSON writes one.
local function whole_number(text)
  if text == "0" or text:match("^[1-9]%d*$") then return tonumber(text) end
  return nil, "parameters.max_tokens must be a whole number"
end

-- The parameters object with the tier's priority first (any the client sent is dropped), and the max_tokens
-- asked for; or nil, nil and why the body is refused.
local function with_priority(json, request, level)
  local setting = '"priority":' .. level
  if request.parameters == nil then
    return '"parameters":{' .. setting .. "}" .. (#request.members == 0 and "" or ","), nil
  end
  local kept, max_tokens = { setting }, nil
  for _, member in ipairs(request.parameter_members) do
    if member.key == "max_tokens" then
      local problem
      max_tokens, problem = whole_number(json:sub(member.value_start, member.value_stop - 1))
      if max_tokens == nil then return nil, nil, problem end
    end
    if member.key ~= "priority" then kept[#kept + 1] = json:sub(member.start, member.value_stop - 1) end
  end
  return "{" .. table.concat(kept, ",") .. "}", max_tokens
end

-- The larger of a generate request's top-level max_tokens and `asked` (its parameters'): Triton takes the
-- inputs of both, so the reservation covers either reading; or nil and why it is refused.
local function top_level_max_tokens(json, request, asked)
  for _, member in ipairs(request.members) do
    if member.key == "max_tokens" then
      local found, problem = whole_number(json:sub(member.value_start, member.value_stop - 1))
      if found == nil then return nil, problem end
      return math.max(found, asked or 0)
    end
  end
  return asked
end

-- The body as the gateway forwards it: the tier's priority `level` written into its parameters and, when the
-- model reports its usage in the output `usage_output` and the request lists outputs without it (Triton then
-- returns only those), that output added to the list. Also the max_tokens asked for (for Triton's generate
-- extension, `generate`, also at the top level); or nil, nil and why the body is refused.
function M.routed(json, level, usage_output, generate)
  local request, problem = M.request(json)
  if request == nil then return nil, nil, problem end
  local parameters, max_tokens, refused = with_priority(json, request, level)
  if parameters == nil then return nil, nil, refused end
  if generate then
    -- Triton's generate extension reads the top level's members as inputs too: "max_tokens" may be there
    max_tokens, refused = top_level_max_tokens(json, request, max_tokens)
    if refused then return nil, nil, refused end
  end
  local edits = {} -- {start, stop (exclusive), text}, applied from the last
  if request.parameters == nil then
    edits[1] = { request.open + 1, request.open + 1, parameters }
  else
    edits[1] = { request.parameters.value_start, request.parameters.value_stop, parameters }
  end
  if usage_output ~= nil and request.outputs ~= nil then
    local names, unreadable, listed = output_names(json, request.outputs, usage_output)
    if names == nil then return nil, nil, unreadable end
    local named = false
    for _, name in ipairs(names) do
      named = named or name == usage_output
    end
    if #listed > 0 and not named then
      local after = listed[#listed].stop
      edits[#edits + 1] = { after, after, ',{"name":"' .. usage_output .. '"}' }
    end
  end
  table.sort(edits, function(a, b) return a[1] > b[1] end)
  for _, edit in ipairs(edits) do
    json = json:sub(1, edit[1] - 1) .. edit[3] .. json:sub(edit[2])
  end
  return json, max_tokens
end

-- The top-level members' values of a body read as M.request reads one (no duplicate or escaped keys), as
-- JSON text by key; or nil and why it is refused.
local function top_values(json)
  local request, problem = M.request(json)
  if request == nil then return nil, problem end
  local values = {}
  for _, member in ipairs(request.members) do
    values[member.key] = json:sub(member.value_start, member.value_stop - 1)
  end
  return values
end

-- A JSON value that is a string without escape sequences, as its text; else nil.
local function plain_string(value) return (value or ""):match('^"([^"\\]+)"$') end

-- What the gateway reads of an OpenAI API request body (chat, completion or embedding): the `model` it names,
-- whether it asks for a stream, and the most tokens it may generate (max_completion_tokens when the key is
-- there, else max_tokens; nil when neither sets one), read as the model's OpenAI server (Python's json)
-- reads them; or nil and why the body is refused. Its top level is read as M.request reads a KServe body
-- (no duplicate or escaped keys), and `model` must be a plain string: the gateway routes on it.
function M.openai(json)
  local values, problem = top_values(json)
  if values == nil then return nil, problem end
  local model = plain_string(values.model)
  if model == nil then return nil, "model must be a model's name: a string without escape sequences" end
  local stream = values.stream
  if stream ~= nil and stream ~= "true" and stream ~= "false" and stream ~= "null" then
    return nil, "stream must be true or false"
  end
  local limit = values.max_completion_tokens
  if limit == nil then limit = values.max_tokens end
  local max_tokens = nil
  if limit ~= nil and limit ~= "null" then
    max_tokens = limit:match("^[1-9]%d*$") and tonumber(limit)
    if not max_tokens then return nil, "max_tokens must be a positive whole number" end
  end
  return { model = model, stream = stream == "true", max_tokens = max_tokens }
end

local MOST_REQUEST_ID = 128

-- What a consumer says of an answer (POST /v1/feedback): {"request_id": the answer's x-request-id,
-- "model": the model that answered, as the answer named it, "rating": 1 to 5, "comment": a string or
-- null}, read as M.openai reads a request. The fields (the comment as JSON-escaped text), or nil and why.
function M.feedback(json)
  local values, problem = top_values(json)
  if values == nil then return nil, problem end
  local request_id = (values.request_id or ""):match('^"([%w_%-]+)"$')
  if request_id == nil or #request_id > MOST_REQUEST_ID then
    return nil, "request_id must be the x-request-id of the answer rated"
  end
  local model = plain_string(values.model)
  if model == nil then return nil, "model must name the model that answered, as its answer did" end
  local rating = (values.rating or ""):match("^[1-5]$")
  if rating == nil then return nil, "rating must be a whole number from 1 to 5" end
  local comment = values.comment
  if comment == "null" then
    comment = nil
  elseif comment ~= nil and comment:sub(1, 1) ~= '"' then
    return nil, "comment must be a string"
  end
  return { request_id = request_id, model = model, rating = rating, comment = comment and comment:sub(2, -2) }
end

return M
