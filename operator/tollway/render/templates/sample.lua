-- Quality samples: what a sampled request and its answer keep (cut to a size, masked, valid UTF-8) before
-- the record leaves the gateway for the sample sink; a streamed answer's text put back together; a worker's
-- memory of recent prompts, which tells a regeneration; and what says the model filtered its answer. Pure
-- string functions, except `recent`, whose state each Envoy worker keeps for itself.

local M = {}

local MASK = "[REDACTED]"
-- What an address may hold on either side of its @, and their most (RFC 5321's limits).
local LOCAL_CHARS, DOMAIN_CHARS = "[%w%.!#$%%&'*+/=?^_`{|}~%-]", "[%w%.%-]"
local LOCAL_MOST, DOMAIN_MOST = 64, 253
-- Card numbers: 13 or more digits with at most spaces or dashes between them (19 is a card's most; longer
-- runs are masked too: a card number with digits next to it is still one).
local CARD_DIGITS = 13

-- Each address as local@domain.tld (a dot in the domain, a letter last), found from its @: the work is
-- linear in the text whatever it holds.
local function mask_emails(text)
  local pieces, from = {}, 1
  local at = text:find("@", 1, true)
  while at do
    local first = at
    while first > from and at - first < LOCAL_MOST and text:sub(first - 1, first - 1):find(LOCAL_CHARS) do
      first = first - 1
    end
    local last = at
    while last - at < DOMAIN_MOST and text:sub(last + 1, last + 1):find(DOMAIN_CHARS) do
      last = last + 1
    end
    while last > at and text:sub(last, last):find("[%.%-]") do -- a sentence's full stop is not the domain's
      last = last - 1
    end
    local domain = text:sub(at + 1, last)
    if first < at and domain:find("^[%w%-]+%.[%w%.%-]*%a$") then
      pieces[#pieces + 1] = text:sub(from, first - 1) .. MASK
      from = last + 1
    end
    at = text:find("@", math.max(at, last) + 1, true)
  end
  pieces[#pieces + 1] = text:sub(from)
  return table.concat(pieces)
end

local function mask_cards(text)
  return (
    text:gsub("%d[%d %-]*%d", function(run)
      local _, digits = run:gsub("%d", "")
      if digits >= CARD_DIGITS then return MASK end
    end)
  )
end

-- `text` with what `redact` names masked: {emails = bool, cards = bool, patterns = {Lua patterns}} (the
-- patterns are what Tollway translated from the tier's regular expressions: render/sample.py).
function M.redact(text, redact)
  if redact.emails then text = mask_emails(text) end
  if redact.cards then text = mask_cards(text) end
  for _, pattern in ipairs(redact.patterns or {}) do
    text = text:gsub(pattern, MASK)
  end
  return text
end

-- The bytes a continuation byte after each lead byte may take (the second one's range is narrower for some
-- leads: no overlong forms, no UTF-16 surrogates, nothing above U+10FFFF), and how many follow it.
local LEADS = {}
for lead = 0xC2, 0xDF do
  LEADS[lead] = { 1, 0x80, 0xBF }
end
for lead = 0xE0, 0xEF do
  LEADS[lead] = { 2, 0x80, 0xBF }
end
for lead = 0xF0, 0xF4 do
  LEADS[lead] = { 3, 0x80, 0xBF }
end
LEADS[0xE0] = { 2, 0xA0, 0xBF }
LEADS[0xED] = { 2, 0x80, 0x9F }
LEADS[0xF0] = { 3, 0x90, 0xBF }
LEADS[0xF4] = { 3, 0x80, 0x8F }

local function valid_sequence(run)
  local lead = LEADS[run:byte(1)]
  if lead == nil or #run ~= lead[1] + 1 then return false end
  local second = run:byte(2)
  return second >= lead[2] and second <= lead[3]
end

-- `text` as valid UTF-8 (an OTLP string must be: a collector refuses a whole batch over one bad byte),
-- each byte of an invalid sequence replaced by "?".
function M.utf8(text)
  return (
    text:gsub("[\128-\255][\128-\191]*", function(run)
      if valid_sequence(run) then return nil end
      local lead = LEADS[run:byte(1)]
      local whole = lead and run:sub(1, lead[1] + 1)
      if whole and #whole == lead[1] + 1 and valid_sequence(whole) then
        return whole .. string.rep("?", #run - #whole) -- a valid character, then stray continuations
      end
      return string.rep("?", #run)
    end)
  )
end

-- What a record keeps of a body: at most `most` bytes, masked as the tier says, valid UTF-8; and whether
-- it was cut. Masked before it is cut (an address or number cut in two would escape its pattern), from a
-- prefix a little longer than what is kept.
function M.kept(text, redact, most)
  local cut = #text > most
  local masked = M.redact(text:sub(1, most + 256), redact)
  return M.utf8(masked:sub(1, most)), cut or #masked > most
end

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function utf8_char(code)
  if code < 0x80 then return string.char(code) end
  if code < 0x800 then return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40) end
  if code < 0x10000 then
    return string.char(
      0xE0 + math.floor(code / 0x1000),
      0x80 + math.floor(code / 0x40) % 0x40,
      0x80 + code % 0x40
    )
  end
  return string.char(
    0xF0 + math.floor(code / 0x40000),
    0x80 + math.floor(code / 0x1000) % 0x40,
    0x80 + math.floor(code / 0x40) % 0x40,
    0x80 + code % 0x40
  )
end

-- The JSON string whose opening quote is at `open`, decoded in one pass (an escape that is not JSON's is kept
-- as written, a lone surrogate becomes U+FFFD), and the position after its closing quote (past the end when
-- it never closes).
function M.json_string(json, open)
  local pieces, at = {}, open + 1
  while true do
    local stop = json:find('["\\]', at)
    if stop == nil then
      pieces[#pieces + 1] = json:sub(at)
      return table.concat(pieces), #json + 1
    end
    pieces[#pieces + 1] = json:sub(at, stop - 1)
    if json:byte(stop) == 34 then return table.concat(pieces), stop + 1 end
    local char = json:sub(stop + 1, stop + 1)
    local code = char == "u" and tonumber(json:sub(stop + 2, stop + 5):match("^%x%x%x%x$") or "", 16)
    if code then
      at = stop + 6
      local low = json:sub(at, at + 5):match("^\\u([dD][c-fC-F]%x%x)$")
      if code >= 0xD800 and code < 0xDC00 and low then
        code, at = 0x10000 + (code - 0xD800) * 0x400 + tonumber(low, 16) - 0xDC00, at + 6
      elseif code >= 0xD800 and code < 0xE000 then
        code = 0xFFFD
      end
      pieces[#pieces + 1] = utf8_char(code)
    else
      pieces[#pieces + 1] = ESCAPES[char] or "\\" .. char
      at = stop + 2
    end
  end
end

local GENERATED_KEYS = { '"content"', '"text"', '"text_output"' }

-- The generated text of an event stream put back together: each event's `content` (chat's delta),
-- `text` (a completion) or `text_output` (Triton's generate_stream) string, in order.
function M.stream_text(events)
  local pieces = {}
  for line in events:gmatch("data:[^\n]*") do
    for _, key in ipairs(GENERATED_KEYS) do
      for open in line:gmatch(key .. '%s*:%s*()"') do
        pieces[#pieces + 1] = (M.json_string(line, open))
      end
    end
  end
  return table.concat(pieces)
end

-- Whether an answer says its content was filtered: OpenAI's finish_reason "content_filter", in a response,
-- a stream's events or a KServe output named finish_reason (the string inside a model's generated text
-- would be escaped, so it cannot say so).
function M.filtered(text)
  return text:find('"content_filter"', 1, true) ~= nil and text:find('"finish_reason"', 1, true) ~= nil
end

-- A worker's memory of recent keys: a function of (key, now) that remembers `key` and says whether it was
-- seen within `window` seconds. Two generations of at most `capacity` keys each: the older is dropped when
-- the newer fills up or is `window` old, so the memory is bounded and a key is remembered at least as long
-- as `window` while fewer than `capacity` others come.
function M.recent(window, capacity)
  local current, previous, count, since = {}, {}, 0, nil
  return function(key, now)
    local seen = current[key] or previous[key]
    if since == nil or count >= capacity or now - since >= window then
      previous, current, count, since = current, {}, 0, now
    end
    if current[key] == nil then count = count + 1 end
    current[key] = now
    return seen ~= nil and now - seen <= window
  end
end

-- What identifies a prompt in that memory: the caller, the model's version and the body (a large body by
-- its length, head and tail: bounded memory).
local WHOLE_BODY = 8192
function M.prompt_key(consumer, model, version, body)
  if #body > WHOLE_BODY then
    body = #body .. ":" .. body:sub(1, WHOLE_BODY / 2) .. body:sub(-WHOLE_BODY / 2)
  end
  return consumer .. "\0" .. model .. "@" .. version .. "\0" .. body
end

return M
