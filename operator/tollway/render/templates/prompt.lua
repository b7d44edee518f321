-- A tier's prompt checks: what its patterns find in a request's prompt. Pure functions of the body and the
-- checks, whose patterns render/redaction.py's prompt_pattern made: lower-case, and linear to search
-- whatever the text holds.
--
-- The prompt is read as the model will read it, so that writing it differently cannot hide it: every string
-- of a JSON body with its escapes decoded ("ign\u006fre" is "ignore"), and the raw bytes of a binary one
-- (protobuf, or the tensors after a KServe body's JSON), with ASCII letters lower-cased.

local sample = require("tollway.sample")

local M = {}

-- The strings of a JSON text (keys and values alike), decoded, one a line.
function M.json_text(json)
  local pieces, at = {}, 1
  while true do
    local open = json:find('"', at, true)
    if open == nil then return table.concat(pieces, "\n") end
    pieces[#pieces + 1], at = sample.json_string(json, open)
  end
end

-- The prompt as the checks see it: the JSON's strings (`json`, may be nil) and the raw bytes (`raw`, may be
-- nil). Patterns read it lower-cased; a guardrail model as it is.
function M.text(json, raw) return (json and M.json_text(json) or "") .. "\n" .. (raw or "") end

-- Whether `check` ({name, pattern or guard, refuse, models: set or nil for all}) looks at prompts to
-- `model_name`.
function M.applies(check, model_name) return check.models == nil or check.models[model_name] ~= nil end

-- The names of the pattern `checks` that find something in `lowered` (the text, lower-cased) for the model
-- `model_name`, in order, and the name of the first of them that refuses (nil if none). Guardrail checks
-- are asked by body.lua.
function M.matches(checks, model_name, lowered)
  local names, refusing = {}, nil
  for _, check in ipairs(checks) do
    if check.pattern and M.applies(check, model_name) and lowered:find(check.pattern) then
      names[#names + 1] = check.name
      refusing = refusing or (check.refuse and check.name or nil)
    end
  end
  return names, refusing
end

local JSON_ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\" }

-- `text` as a JSON string: quotes, backslashes and control characters escaped, invalid UTF-8 replaced.
local function quoted(text)
  local escaped = sample.utf8(text):gsub(
    '[%c"\\]',
    function(char) return JSON_ESCAPES[char] or string.format("\\u%04x", char:byte()) end
  )
  return '"' .. escaped .. '"'
end

-- What a guardrail model is asked about `text` (KServe v2 JSON): TEXT in, FLAGGED out.
function M.guard_request(text)
  return '{"inputs":[{"name":"TEXT","datatype":"BYTES","shape":[1,1],"data":['
    .. quoted(text)
    .. ']}],"outputs":[{"name":"FLAGGED"}]}'
end

local VERDICTS = { ["true"] = true, ["false"] = false }

-- A guardrail model's verdict in its answer (`reply`, KServe v2 JSON): true when FLAGGED is true or a
-- non-zero number, false when false or zero; nil when the answer holds no such output.
function M.guard_flagged(reply)
  local outputs = (reply or ""):match('"outputs"%s*:%s*(%b[])') or ""
  for output in outputs:gmatch("%b{}") do
    if output:find('"name"%s*:%s*"FLAGGED"') then
      local first = output:match('"data"%s*:%s*%[%s*([%w%.%-%+]+)')
      if VERDICTS[first] ~= nil then return VERDICTS[first] end
      local number = tonumber(first or "")
      if number == nil then return nil end
      return number ~= 0
    end
  end
  return nil
end

return M
