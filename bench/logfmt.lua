-- bench/logfmt.lua: speed of the cleaning rules, the dry-run way (reader -> id -> R:json -> out).
--
--   lproc bench/logfmt.lua [--lines N] [--gen FILE] [--map] [FILE]
--
-- Without FILE, generates N (default 1000000) `combined` lines into a temporary file first
-- (--gen FILE keeps them there). Prints lines/s of the loop alone, output to /dev/null.
-- --map adds a trivial mapping function (the cost of one Lua call per line).
package.path = (os.getenv("LPROC_ROOT") or ".") .. "/scripts/lib/?.lua;" .. package.path
local rules = require "lproc.rules"
local sha256 = require "lproc.sha256"
local reader = require "lproc.reader"

local n, file, gen, map = 1000000, nil, nil, false
local i = 1
while arg[i] do
    local a = arg[i]
    if a == "--lines" then n = tonumber(arg[i + 1]); i = i + 1
    elseif a == "--gen" then gen = arg[i + 1]; i = i + 1
    elseif a == "--map" then map = true
    else file = a end
    i = i + 1
end

local UAS = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/118.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.4.0",
    "Mozilla/5.0 (Linux; Android 13; SM-S901B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/112.0.0.0 Mobile Safari/537.36",
}
local PATHS = { "/", "/index.html", "/api/v1/items?page=2", "/static/app.js", "/login", "/img/logo.png" }
local STATUS = { 200, 200, 200, 200, 304, 404, 500, 301 }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }

local temporary = not file and not gen
if not file then
    file = gen or os.tmpname()
    local f = assert(io.open(file, "w"))
    math.randomseed(42)
    local rnd = math.random
    local ips = {}                  -- clients come back: a pool of 20000 addresses
    for k = 1, 20000 do
        ips[k] = string.format("%d.%d.%d.%d", rnd(1, 223), rnd(0, 255), rnd(0, 255), rnd(1, 254))
    end
    for _ = 1, n do
        f:write(string.format('%s - - [%02d/%s/2022:%02d:%02d:%02d +0100] "GET %s HTTP/1.1" %d %d "-" "%s"\n',
            ips[rnd(1, #ips)], rnd(1, 28), MONTHS[rnd(1, 12)],
            rnd(0, 23), rnd(0, 59), rnd(0, 59), PATHS[rnd(1, #PATHS)], STATUS[rnd(1, #STATUS)],
            rnd(0, 100000), UAS[rnd(1, #UAS)]))
    end
    f:close()
end

local R = rules.new{ geoip = { (os.getenv("LPROC_ROOT") or ".") .. "/build/country.mmdb" } }
R:format "combined"
R:format "proxy"
if map then function R.map(rec) end end
local ok, err = pcall(R.compile, R)
if not ok then   -- no built-in country db: run without GeoIP
    io.stderr:write("bench: ", tostring(err), " (running without GeoIP)\n")
    R.geoip = {}
    R:compile()
end

local out = assert(io.open("/dev/null", "w"))
out:setvbuf("full", 1 << 16)
local r = assert(reader.open(file))
local json, hex = R.json, sha256.hex
local t0, count = os.clock(), 0
for line, off in r:lines() do
    out:write(json(R, line, hex(file, "\0", off, "\0", line)), "\n")
    count = count + 1
end
local dt = os.clock() - t0
r:close()
out:close()
if temporary then os.remove(file) end
local s = R:stats()
print(string.format("%d lines in %.2f s CPU: %.0f lines/s (%d rows, %d rejects, ua cache %d/%d)",
    count, dt, count / dt, s.rows, s.rejects, s.ua_cache_hits, s.ua_cache_hits + s.ua_cache_misses))
