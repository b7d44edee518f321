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
-- for wire type 0 the value is read with varint at value_start); nil when the bytes are not a message, or
-- are one that protobuf's parsers could read otherwise than this: a tag of more than 5 bytes or above 32
-- bits (C++ protobuf, Triton's, keeps a tag's low 32 bits, so field 2^29 + 1 would be field 1 to it), field
-- number 0, or a varint value of more than 10 bytes.
function M.fields(message)
  local found, at = {}, 1
  while at <= #message do
    local start = at
    local key, value_start = M.varint(message, at)
    if key == nil or value_start - start > 5 or key >= 2 ^ 32 or key < 8 then return nil end
    local wire = key % 8
    local stop
    at = value_start
    if wire == 0 then
      local _
      _, stop = M.varint(message, at)
      if stop ~= nil and stop - at > 10 then return nil end
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

-- InferParameter's oneof members (bool 1, int64 2, string 3, double 4, uint64 5) and their wire types; a
-- field of another wire type is an unknown field to protobuf, and to this reader too.
local MEMBER_WIRES = { [1] = 0, [2] = 0, [3] = 2, [4] = 1, [5] = 0 }

-- An InferParameter's whole number (int64_param or uint64_param, or string_param in decimal); nil and why
-- not otherwise. Protobuf reads the last member on the wire and merges repeated messages, so anything but
-- exactly one member is refused rather than guessed at.
local function whole_number(parameter)
  local member = nil
  for _, field in ipairs(M.fields(parameter) or {}) do
    if MEMBER_WIRES[field.number] == field.wire then
      if member ~= nil then return nil, "parameters.max_tokens must hold exactly one value" end
      member = field
    end
  end
  local number = nil
  if member and (member.number == 2 or member.number == 5) then
    number = M.varint(parameter, member.value_start)
    if member.number == 2 and number and number >= 2 ^ 63 then number = nil end -- a negative int64
  elseif member and member.number == 3 then
    number = tonumber(parameter:sub(member.value_start, member.stop - 1):match("^%d+$") or "")
  end
  if number == nil then return nil, "parameters.max_tokens must be a whole number" end
  return number
end

-- The key and value of a parameters map entry; nil and why when protobuf could read it otherwise (an entry
-- is a message: a repeated key is read as the last, repeated values are merged).
local function entry_parts(entry)
  local found = M.fields(entry)
  if found == nil then return nil, nil, "parameters: an entry is not a protobuf message" end
  local key, value, keys, values = nil, nil, 0, 0
  for _, part in ipairs(found) do
    if part.wire == 2 and part.number == 1 then
      key, keys = entry:sub(part.value_start, part.stop - 1), keys + 1
    elseif part.wire == 2 and part.number == 2 then
      value, values = entry:sub(part.value_start, part.stop - 1), values + 1
    end
  end
  if keys > 1 or values > 1 then return nil, nil, "parameters: an entry repeats its key or its value" end
  return key or "", value or ""
end

-- parameters["max_tokens"] of a ModelInferRequest (field 4, a map of InferParameter), or nil; an error when
-- it is not one whole number (int64, uint64 or a decimal string) given once.
function M.grpc_max_tokens(message)
  local max_tokens = nil
  for _, field in ipairs(M.fields(message) or {}) do
    if field.number == 4 and field.wire == 2 then
      local key, value, problem = entry_parts(message:sub(field.value_start, field.stop - 1))
      if key == nil then return nil, problem end
      if key == "max_tokens" then
        if max_tokens ~= nil then return nil, "parameters.max_tokens is given more than once" end
        max_tokens, problem = whole_number(value)
        if max_tokens == nil then return nil, problem end
      end
    end
  end
  return max_tokens
end

-- The fields of a ModelInferRequest (`rest`) with the usage output `name` added to the outputs it requests
-- (field 6, each an InferRequestedOutputTensor: name 1, parameters 2) when it requests some but not that one
-- (Triton then returns only those requested); nil and why when an entry is unreadable, or asks for the usage
-- output with parameters (a classification or a shared-memory region would keep its text from the reply).
-- Protobuf reads the last of a message's repeated name fields; so does this.
function M.with_requested_output(rest, name)
  local requested, named = false, false
  for _, field in ipairs(M.fields(rest) or {}) do
    if field.number == 6 and field.wire == 2 then
      requested = true
      local output = rest:sub(field.value_start, field.stop - 1)
      local parts = M.fields(output)
      if parts == nil then return nil, "outputs: an entry is not a protobuf message" end
      local last, parameters = nil, false
      for _, part in ipairs(parts) do
        if part.number == 1 and part.wire == 2 then last = output:sub(part.value_start, part.stop - 1) end
        parameters = parameters or part.number == 2
      end
      if last == name and parameters then return nil, "the output " .. name .. " takes no parameters" end
      named = named or last == name
    end
  end
  if not requested or named then return rest end
  return rest .. M.length_field(6, M.length_field(1, name))
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

-- The first element of a tensor's raw contents as a whole number: little-endian (U)INT32 or (U)INT64 (a
-- count never needs the top bytes, which a double cannot hold anyway); nil for other types.
local WIDTHS = { UINT32 = 4, INT32 = 4, UINT64 = 6, INT64 = 6 }

local function first_number(raw, datatype)
  local width = WIDTHS[datatype]
  if width == nil or #raw < width then return nil end
  local value = 0
  for index = width, 1, -1 do
    value = value * 256 + raw:byte(index)
  end
  return value
end

-- The outputs named in `names` (a set) of a ModelInferResponse, as numbers by name: its outputs (field 5,
-- each InferOutputTensor's name 1 and datatype 2) pair in order with its raw_output_contents (field 6).
local function named_outputs(response, names)
  local tensors, raws, found = {}, {}, {}
  for _, field in ipairs(M.fields(response) or {}) do
    local value = response:sub(field.value_start, field.stop - 1)
    if field.number == 5 and field.wire == 2 then
      local tensor = {}
      for _, part in ipairs(M.fields(value) or {}) do
        if part.wire == 2 and (part.number == 1 or part.number == 2) then
          tensor[part.number] = value:sub(part.value_start, part.stop - 1)
        end
      end
      tensors[#tensors + 1] = tensor
    elseif field.number == 6 and field.wire == 2 then
      raws[#raws + 1] = value
    end
  end
  for index, tensor in ipairs(tensors) do
    if names[tensor[1]] and raws[index] then found[tensor[1]] = first_number(raws[index], tensor[2]) end
  end
  return found
end

-- Largest frame the counts reader parses: a larger one (a big tensor) is passed over, not copied.
local LARGEST_COUNTED_FRAME = 1024 * 1024

-- A reader of a ModelStreamInfer response stream, fed its chunks as they come (frames cut anywhere): the
-- input and output token counts the model's responses have reported so far (outputs `input_name` and
-- `output_name`, the largest seen), or nil before any. Each ModelStreamInferResponse's infer_response is
-- field 2.
function M.stream_counts(input_name, output_name)
  local pending, skip, input, output = "", 0, nil, nil
  local names = { [input_name] = true, [output_name or ""] = true }
  return function(chunk)
    if skip >= #chunk then
      skip = skip - #chunk
      return input, output
    end
    pending = pending .. chunk:sub(skip + 1)
    skip = 0
    while #pending >= 5 do
      local _, b1, b2, b3, b4 = pending:byte(1, 5)
      local length = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
      if length > LARGEST_COUNTED_FRAME then
        skip, pending = math.max(0, length - (#pending - 5)), pending:sub(6 + length)
      elseif #pending < 5 + length then
        break
      else
        local message = pending:sub(6, 5 + length)
        pending = pending:sub(6 + length)
        for _, field in ipairs(M.fields(message) or {}) do
          if field.number == 2 and field.wire == 2 then
            local found = named_outputs(message:sub(field.value_start, field.stop - 1), names)
            local found_input, found_output = found[input_name], found[output_name or ""]
            if found_input ~= nil or found_output ~= nil then
              input = math.max(input or 0, found_input or 0)
              output = math.max(output or 0, found_output or 0)
            end
          end
        end
      end
    end
    return input, output
  end
end

-- The message of a body that is one uncompressed gRPC frame, or nil (a compressed frame, a frame cut short,
-- or more than one: a stream of ModelStreamInfer may carry one request through the gateway, never more).
function M.unframe(bytes)
  if #bytes < 5 or bytes:byte(1) ~= 0 then return nil end
  local _, b1, b2, b3, b4 = bytes:byte(1, 5)
  if ((b1 * 256 + b2) * 256 + b3) * 256 + b4 ~= #bytes - 5 then return nil end
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
