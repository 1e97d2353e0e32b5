-- wrk script: signed NXCloud-style queryAXB POSTs with a fresh ts.
--
-- wrk's Lua has no md5, so signatures are precomputed by Python into a "sign file", one line per
-- (second, body):
--     <ts> <sign> <body>
-- where ts is a ms-epoch string, sign = md5hex("accessKey=K&action=queryAXB&bizType=5&ts=TS
-- &body=BODY&accessSecret=S") and body is compact JSON without spaces, e.g.
--     1732600000000 0f3c...e1 {"caller":"85222222222","did":"85235753351"}
-- Lines starting with '#' are comments; "#accessKey=K" gives the default access key.
-- Generate one with:  python bench/stack_choice.py gen-signs --out /tmp/signs.txt --seconds 900
--
-- Each request uses the lines whose ts second equals os.time() (so ts moves every second), and
-- rotates through the (caller, did) bodies of that second. Outside the file's range it clamps to
-- the first/last second and counts the request as "stale" (reported at the end).
--
-- Parameters: wrk script args after "--" as key=value, or environment variables:
--   signs=PATH      | PNS_SIGN_FILE    sign file (required)
--   key=AK          | PNS_ACCESS_KEY   accessKey header (default: the file's #accessKey=)
--   pairs=C:D,C:D   | PNS_PAIRS        only use these caller:did pairs (each must be in the file)
--   close=1         | PNS_CONN_CLOSE   send "Connection: close" (one request per connection)
--   path=/api/pns/  | PNS_PATH         request path (default: the URL's path, else /api/pns/)
--   check=1         | PNS_CHECK        count answers that are not 200 with "code":0 (costs client
--                                      CPU: wrk then copies every answer into Lua)
--   json=0          | PNS_JSON         1 (default): print one "WRK_JSON {...}" summary line at end
-- (wrk passes script args to each thread's init(); args[0] is the URL, so ipairs skips it.)
--
-- Example:
--   taskset -c 1 wrk -t1 -c64 -d10s -s bench/wrk_signed.lua http://127.0.0.1:8089/api/pns/ \
--       -- signs=/tmp/signs.txt key=bench-ak

local opts = {}

local function opt(name, env, default)
  local v = opts[name]
  if v == nil or v == "" then v = os.getenv(env) end
  if v == nil or v == "" then v = default end
  return v
end

local function truthy(v)
  return v ~= nil and v ~= "" and v ~= "0" and v ~= "false" and v ~= "no"
end

-- per-thread state (each wrk thread has its own Lua state)
local by_sec = {}      -- second -> { {ts=, sign=, body=}, ... }
local cache = {}       -- second -> { formatted request strings }
local first_sec, last_sec
local rr = 0
local headers_base
-- globals, read from done() (main Lua state) through thread:get()
stale = 0
bad = 0
emit_json = true

local function parse_pairs(s)
  if s == nil or s == "" then return nil end
  local set = {}
  for c, d in string.gmatch(s, "(%d+):(%d+)") do
    set['{"caller":"' .. c .. '","did":"' .. d .. '"}'] = true
  end
  return set
end

function init(args)
  for _, a in ipairs(args) do
    local k, v = string.match(a, "^%-*([%w_]+)=(.*)$")
    if k then opts[k] = v else opts[a:gsub("^%-+", "")] = "1" end
  end

  local path = opt("signs", "PNS_SIGN_FILE", nil)
  if path == nil then error("wrk_signed.lua: no sign file (signs=PATH or PNS_SIGN_FILE)") end
  local f = io.open(path, "r")
  if f == nil then error("wrk_signed.lua: cannot open sign file " .. path) end

  local want = parse_pairs(opt("pairs", "PNS_PAIRS", nil))
  local file_key
  local n = 0
  for line in f:lines() do
    if string.sub(line, 1, 1) == "#" then
      local k = string.match(line, "^#accessKey=(%S+)")
      if k then file_key = k end
    else
      local ts, sign, body = string.match(line, "^(%d+)%s+(%x+)%s+(%S+)%s*$")
      if ts and (want == nil or want[body]) then
        -- second = ts // 1000 (string slicing: exact, no float rounding on ms epochs)
        local sec = tonumber(string.sub(ts, 1, -4))
        local list = by_sec[sec]
        if list == nil then
          list = {}
          by_sec[sec] = list
          if first_sec == nil or sec < first_sec then first_sec = sec end
          if last_sec == nil or sec > last_sec then last_sec = sec end
        end
        list[#list + 1] = { ts = ts, sign = sign, body = body }
        n = n + 1
      end
    end
  end
  f:close()
  if n == 0 then error("wrk_signed.lua: no usable lines in " .. path) end
  if want ~= nil then
    local per = #by_sec[first_sec]
    local wanted = 0
    for _ in pairs(want) do wanted = wanted + 1 end
    if per ~= wanted then
      error("wrk_signed.lua: sign file has " .. per .. " of the " .. wanted .. " requested pairs")
    end
  end

  local key = opt("key", "PNS_ACCESS_KEY", file_key)
  if key == nil then error("wrk_signed.lua: no access key (key=AK, PNS_ACCESS_KEY or #accessKey=)") end

  local url_path = wrk.path
  if url_path == nil or url_path == "" or url_path == "/" then url_path = "/api/pns/" end
  wrk.path = opt("path", "PNS_PATH", url_path)
  wrk.method = "POST"

  headers_base = {
    ["Content-Type"] = "application/json",
    ["accessKey"] = key,
    ["action"] = "queryAXB",
    ["bizType"] = "5",
  }
  if truthy(opt("close", "PNS_CONN_CLOSE", nil)) then
    headers_base["Connection"] = "close"
  end
  emit_json = truthy(opt("json", "PNS_JSON", "1"))
  -- wrk decides after thread 0's init() whether to hand responses to Lua: without check, drop
  -- the response() callback so wrk does not copy headers and bodies into Lua for every answer.
  if not truthy(opt("check", "PNS_CHECK", nil)) then response = nil end
end

local function requests_for(sec)
  local reqs = cache[sec]
  if reqs ~= nil then return reqs end
  local list = by_sec[sec]
  reqs = {}
  for i, e in ipairs(list) do
    local h = {}
    for k, v in pairs(headers_base) do h[k] = v end
    h["ts"] = e.ts
    h["sign"] = e.sign
    reqs[i] = wrk.format("POST", wrk.path, h, e.body)
  end
  cache[sec] = reqs
  cache[sec - 2] = nil  -- keep memory flat over long runs
  return reqs
end

function request()
  local sec = os.time()
  if sec < first_sec then
    sec = first_sec; stale = stale + 1
  elseif sec > last_sec then
    sec = last_sec; stale = stale + 1
  elseif by_sec[sec] == nil then
    -- hole in the file: use the closest earlier second
    repeat sec = sec - 1 until by_sec[sec] ~= nil
    stale = stale + 1
  end
  local reqs = requests_for(sec)
  rr = rr + 1
  return reqs[(rr % #reqs) + 1]
end

function response(status, headers, body)
  if status ~= 200 or body == nil or not string.find(body, '"code":0,', 1, true) then
    bad = bad + 1
  end
end

-- per-thread counters, gathered in done() through wrk's thread objects
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local total_stale, total_bad, want_json = 0, 0, true
  for _, t in ipairs(threads) do
    total_stale = total_stale + (tonumber(t:get("stale")) or 0)
    total_bad = total_bad + (tonumber(t:get("bad")) or 0)
    if t:get("emit_json") == false then want_json = false end
  end
  if total_stale > 0 then
    io.stderr:write(string.format(
      "wrk_signed.lua: %d requests used a ts outside the sign file's range (clamped)\n",
      total_stale))
  end
  if not want_json then return end
  local e = summary.errors
  local fl = math.floor
  local secs = summary.duration / 1e6
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"bytes":%d,'
    .. '"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d,'
    .. '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,'
    .. '"stale_ts":%d,"bad_body":%d}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes,
    latency.mean, fl(latency:percentile(50)), fl(latency:percentile(90)),
    fl(latency:percentile(99)), fl(latency.max),
    e.connect, e.read, e.write, e.status, e.timeout, total_stale, total_bad))
end
