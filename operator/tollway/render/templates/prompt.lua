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
-- nil), lower-cased.
function M.text(json, raw) return ((json and M.json_text(json) or "") .. "\n" .. (raw or "")):lower() end

-- The names of the `checks` ({name, pattern, refuse, models: set or nil for all}) that find something in
-- `text` for the model `model_name`, in order, and the name of the first of them that refuses (nil if none).
function M.matches(checks, model_name, text)
  local names, refusing = {}, nil
  for _, check in ipairs(checks) do
    if (check.models == nil or check.models[model_name]) and text:find(check.pattern) then
      names[#names + 1] = check.name
      refusing = refusing or (check.refuse and check.name or nil)
    end
  end
  return names, refusing
end

return M
