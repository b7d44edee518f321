-- luacheck (make lint) over the gateway's Lua: LuaJIT, as Envoy embeds it. The pure modules use no globals;
-- the filter programs define the two entry points Envoy calls, and gateway.lua reads the data table `T` that
-- render/lua.py puts above it.
std = "luajit"
max_line_length = 110
local filter = { globals = { "envoy_on_request", "envoy_on_response" } }
files["operator/tollway/render/templates/token_headers.lua"] = filter
files["operator/tollway/render/templates/gateway.lua"] = { globals = filter.globals, read_globals = { "T" } }
