-- luacheck (make lint) over the gateway's Lua: LuaJIT, as Envoy embeds it. The modules use no globals; the
-- filter programs define the entry points Envoy calls, and gateway.lua, body.lua and hold.lua read the data
-- table `T` that render/lua.py puts above them.
std = "luajit"
max_line_length = 110
local filter = { globals = { "envoy_on_request", "envoy_on_response" } }
files["operator/tollway/render/templates/token_headers.lua"] = filter
local program = { globals = filter.globals, read_globals = { "T" } }
files["operator/tollway/render/templates/gateway.lua"] = program
files["operator/tollway/render/templates/body.lua"] = program
files["operator/tollway/render/templates/hold.lua"] = program
