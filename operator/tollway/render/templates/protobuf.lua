-- gRPC requests of Triton's inference.GRPCInferenceService, read and written at the protobuf wire level: the
-- model is routed by the model_name and model_version fields the request carries (fields 1 and 2 of every
-- per-model request), and ModelInferRequest's parameters (field 4) carry max_tokens and the priority.
-- Pure string functions.

local M = {}

-- The unsigned varint at `at`, and the position after it; nil when the bytes end inside it.
function M.varint(bytes, at)
  local value, scale = 0, 1
  while true do
    local byte = bytes:byte(at)
    if byte == nil then return nil end
    value, at = value + (byte % 128) * scale, at + 1
    if byte < 128 then return value, at end
    scale = scale * 128
  end
end

function M.encode_varint(value)
  local out = {}
  repeat
    local byte = value % 128
    value = math.floor(value / 128)
    out[#out + 1] = string.char(value > 0 and byte + 128 or byte)
  until value == 0
  return table.concat(out)
end

-- A length-delimited field (wire type 2): strings, bytes and embedded messages.
function M.length_field(number, value)
  return M.encode_varint(number * 8 + 2) .. M.encode_varint(#value) .. value
end

-- The top-level fields of a protobuf message: {number, wire, start, value_start, stop} each (stop exclusive;
-- for wire type 0 the value is read with varint at value_start); nil when the bytes are not a message.
function M.fields(message)
  local found, at = {}, 1
  while at <= #message do
    local start = at
    local key, value_start = M.varint(message, at)
    if key == nil then return nil end
    local wire = key % 8
    local stop
    at = value_start
    if wire == 0 then
      local _
      _, stop = M.varint(message, at)
    elseif wire == 1 then
      stop = at + 8
    elseif wire == 2 then
      local length
      length, value_start = M.varint(message, at)
      if length == nil then return nil end
      stop = value_start + length
    elseif wire == 5 then
      stop = at + 4
    else
      return nil
    end
    if stop == nil or stop > #message + 1 then return nil end
    found[#found + 1] =
      { number = math.floor(key / 8), wire = wire, start = start, value_start = value_start, stop = stop }
    at = stop
  end
  return found
end

-- Fields 1 and 2 (strings) of a protobuf message, and the message's other fields unchanged; nil if garbled.
function M.name_and_version(message)
  local found = M.fields(message)
  if found == nil then return nil end
  local name, version, rest = "", "", {}
  for _, field in ipairs(found) do
    local value = message:sub(field.value_start, field.stop - 1)
    if field.number == 1 and field.wire == 2 then
      name = value
    elseif field.number == 2 and field.wire == 2 then
      version = value
    else
      rest[#rest + 1] = message:sub(field.start, field.stop - 1)
    end
  end
  return name, version, table.concat(rest)
end

-- An InferParameter's whole number (int64_param 2 or uint64_param 5 as a varint, string_param 3 in
-- decimal), or nil.
local function whole_number(parameter)
  local number = nil
  for _, choice in ipairs(M.fields(parameter) or {}) do
    if choice.wire == 0 and (choice.number == 2 or choice.number == 5) then
      number = M.varint(parameter, choice.value_start)
    elseif choice.number == 3 then
      number = tonumber(parameter:sub(choice.value_start, choice.stop - 1):match("^%d+$") or "")
    end
  end
  return number
end

-- The largest parameters["max_tokens"] of a ModelInferRequest (field 4, a map of InferParameter), or nil;
-- an error when one is not a whole number (int64, uint64 or a decimal string).
function M.grpc_max_tokens(message)
  local most = nil
  for _, field in ipairs(M.fields(message) or {}) do
    if field.number == 4 and field.wire == 2 then
      local entry = message:sub(field.value_start, field.stop - 1)
      local key, value = nil, nil
      for _, part in ipairs(M.fields(entry) or {}) do
        if part.number == 1 then key = entry:sub(part.value_start, part.stop - 1) end
        if part.number == 2 then value = entry:sub(part.value_start, part.stop - 1) end
      end
      if key == "max_tokens" then
        local number = whole_number(value or "")
        if number == nil then return nil, "parameters.max_tokens must be a whole number" end
        most = math.max(most or 0, number)
      end
    end
  end
  return most
end

-- The request for `name` and `version` with the caller's other fields (`rest`, from name_and_version) and,
-- when `level` is given, parameters["priority"] = uint64 level appended: the last of duplicate map keys
-- wins, so a client cannot outrank its tier.
function M.routed_request(name, version, rest, level)
  local message = M.length_field(1, name) .. M.length_field(2, tostring(version)) .. rest
  if level == nil then return message end
  local priority = M.encode_varint(5 * 8) .. M.encode_varint(level)
  return message .. M.length_field(4, M.length_field(1, "priority") .. M.length_field(2, priority))
end

-- The one message of an uncompressed gRPC frame, or nil.
function M.unframe(bytes)
  if #bytes < 5 or bytes:byte(1) ~= 0 then return nil end
  return bytes:sub(6)
end

function M.frame(message)
  local n = #message
  return string.char(
    0,
    math.floor(n / 16777216) % 256,
    math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256,
    n % 256
  ) .. message
end

return M
