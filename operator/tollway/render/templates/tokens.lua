-- Token accounting, HTTP and gRPC alike: what a request reserves before it runs, and what the response says
-- it used. Pure functions of the request's size, the model's and tier's data (`T`), and the response text.

local M = {}

-- The most a request of `body_length` bytes may use: a prompt estimate (4 bytes a token) plus the output
-- allowed (`max_tokens`, else the model's default).
function M.estimate(model, body_length, max_tokens)
  return math.ceil(body_length / 4) + (max_tokens or model.max_tokens)
end

-- The tokens to reserve for a request of `body_length` bytes to `model_name`, for the ratelimit filters to
-- charge before it runs: its estimate. Nil when the tier counts no tokens for the model; false and why when
-- the request could never fit the tier's token limit (nor would a larger reservation ever be charged).
function M.reservation(tier, model_name, model, scopes, body_length, max_tokens)
  if model.input == nil or not (scopes.tpm or scopes.tpd) then return nil end
  local reserve = M.estimate(model, body_length, max_tokens)
  local cap = tier.token_caps[model_name]
  if cap ~= nil and reserve > cap then
    return false, "the request reserves " .. reserve .. " tokens, more than the tier's limit of " .. cap
  end
  return reserve
end

-- The leading whole number of a header value such as "600, 600;w=60", or nil.
function M.first_number(value) return value and value:match("^%s*(%d+)") end

-- The largest count reported under `key` (a Lua pattern) anywhere in the response: text a model generated can
-- only make the charge larger, never smaller.
function M.used_tokens(text, key)
  local most = nil
  for number in text:gmatch("[^%w_]" .. key .. '\\?"%s*:%s*(%d+)') do
    most = math.max(most or 0, tonumber(number))
  end
  return most
end

-- The input and output tokens a response reports and, when the request reserved `reserved` tokens, what they
-- exceed the reservation by: that much more is charged. A response that reports neither is charged its
-- request's `estimate` as output (usage is compulsory: leaving it out never costs less), and the fourth
-- result says so; nil when there is no estimate either.
function M.settlement(text, model, reserved, estimate)
  return M.charged(M.used_tokens(text, model.input), M.used_tokens(text, model.output), reserved, estimate)
end

-- The same from the counts a response reported (nil for a count it left out): what settlement returns.
function M.charged(input, output, reserved, estimate)
  local unreported = input == nil and output == nil
  if unreported then
    if estimate == nil then return nil end
    input, output = 0, tonumber(estimate)
  end
  input, output = input or 0, output or 0
  local extra = reserved and math.max(0, input + output - tonumber(reserved)) or nil
  return input, output, extra, unreported
end

-- The last usage comment in a piece of an OpenAI event stream: the model's OpenAI server writes
-- ": usage PROMPT COMPLETION" after each event it sends, counting what the model produced so far (SSE
-- clients ignore comments; the model's text, inside JSON strings, holds no line break: it cannot write one).
-- The input and output tokens, or nil when the text holds no whole comment.
function M.stream_usage(text)
  local input, output = nil, nil
  for found_input, found_output in text:gmatch("\n: usage (%d+) (%d+)\r?\n") do
    input, output = found_input, found_output
  end
  return tonumber(input), tonumber(output)
end

-- The x-ratelimit-remaining-tokens value once `extra` more tokens are charged, or nil without the header.
function M.remaining_after(header, extra)
  local remaining = tonumber(M.first_number(header) or "")
  if remaining == nil then return nil end
  return tostring(math.max(0, remaining - extra))
end

return M
