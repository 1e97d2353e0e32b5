-- wrk script: signed state-changing POSTs (bindAXB by default), each pre-signed line used ONCE.
--
-- pns refuses a state-changing request whose sign was already used (1006, the replay guard), and
-- a new pair needs new numbers, so every request must be a different body with its own
-- signature. wrk's Lua has no md5: Python (bench/run.py) precomputes a file of lines
--     <ts> <sign> <body>
-- (same format as bench/wrk_signed.lua's sign file; '#' lines are comments, "#accessKey=K" gives
-- the default key), all with a ts inside pns's 60 s window, and this script sends them in order,
-- one per request. Make the file longer than the run can use: when it runs out, the last line
-- is sent again (pns answers 1006) and the summary reports "exhausted" > 0, which bench/run.py
-- treats as a failed measurement.
--
-- Every answer is checked (200 with "code":0 counts as ok; anything else as bad_body, and the
-- first bad answer is kept in "first_bad"). Binds are slow enough for this to cost the client
-- little.
--
-- Parameters (script args after "--" as key=value, or environment variables):
--   signs=PATH      | PNS_SIGN_FILE    the pre-signed file (required)
--   key=AK          | PNS_ACCESS_KEY   accessKey header (default: the file's #accessKey=)
--   action=NAME     | PNS_ACTION       action header (default bindAXB)
--   path=/api/pns/  | PNS_PATH         request path
-- Use with -t1 (one Lua state walks the file; with more threads each would send the same lines).
-- At the end it prints one line:
--   WRK_JSON {"requests":..,"rps":..,"lat_p50_us":..,"lat_p99_us":..,"ok":..,"bad_body":..,
--             "exhausted":..,"lines":..,"first_bad":"..."}

local opts = {}

local function opt(name, env, default)
  local v = opts[name]
  if v == nil or v == "" then v = os.getenv(env) end
  if v == nil or v == "" then v = default end
  return v
end

local lines = {}     -- { {ts=, sign=, body=}, ... }
local nxt = 0
local headers_base
-- globals, read from done() through thread:get()
ok = 0
bad = 0
exhausted = 0
nlines = 0
first_bad = ""

function init(args)
  for _, a in ipairs(args) do
    local k, v = string.match(a, "^%-*([%w_]+)=(.*)$")
    if k then opts[k] = v end
  end
  local path = opt("signs", "PNS_SIGN_FILE", nil)
  if path == nil then error("wrk_bind.lua: no sign file (signs=PATH or PNS_SIGN_FILE)") end
  local f = io.open(path, "r")
  if f == nil then error("wrk_bind.lua: cannot open " .. path) end
  local file_key
  for line in f:lines() do
    if string.sub(line, 1, 1) == "#" then
      local k = string.match(line, "^#accessKey=(%S+)")
      if k then file_key = k end
    else
      local ts, sign, body = string.match(line, "^(%d+)%s+(%x+)%s+(%S+)%s*$")
      if ts then lines[#lines + 1] = { ts = ts, sign = sign, body = body } end
    end
  end
  f:close()
  nlines = #lines
  if nlines == 0 then error("wrk_bind.lua: no usable lines in " .. path) end
  local key = opt("key", "PNS_ACCESS_KEY", file_key)
  if key == nil then error("wrk_bind.lua: no access key") end
  local url_path = wrk.path
  if url_path == nil or url_path == "" or url_path == "/" then url_path = "/api/pns/" end
  wrk.path = opt("path", "PNS_PATH", url_path)
  headers_base = {
    ["Content-Type"] = "application/json",
    ["accessKey"] = key,
    ["action"] = opt("action", "PNS_ACTION", "bindAXB"),
    ["bizType"] = "5",
  }
end

function request()
  nxt = nxt + 1
  if nxt > nlines then
    nxt = nlines
    exhausted = exhausted + 1
  end
  local e = lines[nxt]
  local h = {}
  for k, v in pairs(headers_base) do h[k] = v end
  h["ts"] = e.ts
  h["sign"] = e.sign
  return wrk.format("POST", wrk.path, h, e.body)
end

function response(status, headers, body)
  if status == 200 and body ~= nil and string.find(body, '"code":0,', 1, true) then
    ok = ok + 1
  else
    bad = bad + 1
    if first_bad == "" then first_bad = tostring(status) .. " " .. tostring(body) end
  end
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local t_ok, t_bad, t_exh, t_lines, t_first = 0, 0, 0, 0, ""
  for _, t in ipairs(threads) do
    t_ok = t_ok + (tonumber(t:get("ok")) or 0)
    t_bad = t_bad + (tonumber(t:get("bad")) or 0)
    t_exh = t_exh + (tonumber(t:get("exhausted")) or 0)
    t_lines = t_lines + (tonumber(t:get("nlines")) or 0)
    if t_first == "" then t_first = t:get("first_bad") or "" end
  end
  local e = summary.errors
  local fl = math.floor
  local secs = summary.duration / 1e6
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"bytes":%d,'
    .. '"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d,'
    .. '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,'
    .. '"stale_ts":0,"ok":%d,"bad_body":%d,"exhausted":%d,"lines":%d,"first_bad":%s}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes,
    latency.mean, fl(latency:percentile(50)), fl(latency:percentile(90)),
    fl(latency:percentile(99)), fl(latency.max),
    e.connect, e.read, e.write, e.status, e.timeout, t_ok, t_bad, t_exh, t_lines,
    json_string(string.sub(t_first, 1, 300))))
end
