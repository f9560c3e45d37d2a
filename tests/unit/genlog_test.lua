-- genlog_test.lua: scripts/genlog.lua, the sample-log generator, run as a program.
local T = require "testing"

local LPROC = os.getenv("LPROC") or "./lproc"
local ROOT = os.getenv("LPROC_ROOT") or "."
local TMP = os.getenv("LPROC_TEST_TMP") or os.getenv("TMPDIR") or "/tmp"
local SCRIPT = ROOT .. "/scripts/genlog.lua"
local GEOIP = "/usr/share/tor/geoip"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function slurp(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("a")
    f:close()
    return s
end

local seq = 0
-- Runs the generator with args; returns its standard output, standard error, exit code.
local function gen(args)
    seq = seq + 1
    local out, err = TMP .. "/genlog-out-" .. seq, TMP .. "/genlog-err-" .. seq
    local cmd = { q(LPROC), q(SCRIPT) }
    for _, a in ipairs(args) do cmd[#cmd + 1] = q(a) end
    local _, how, code = os.execute(table.concat(cmd, " ") .. " >" .. q(out) .. " 2>" .. q(err))
    local o, e = slurp(out), slurp(err)
    os.remove(out)
    os.remove(err)
    return o, e, how == "exit" and code or -1
end

local function lines_of(s)
    local t = {}
    for l in s:gmatch("([^\n]*)\n") do t[#t + 1] = l end
    return t
end

-- Reference patterns of the two formats (independent of the generator's code).
local STAMP = '%[(%d%d)/(%a%a%a)/(%d%d%d%d):(%d%d):(%d%d):(%d%d) ([+-]%d%d%d%d)%] '
local COMBINED = '^(%S+) %- (%S+) ' .. STAMP
    .. '"(%u+) (/%S*) (HTTP/%d%.%d)" (%d%d%d) (%d+) "([^"]*)" "([^"]*)"$'
local PROXY = '^(%S+) (%S+) (%S+) ' .. STAMP
    .. '"(%u+) (https?)://([%w.-]+):(%d+)(/%S*) (HTTP/%d%.%d)" (%d%d%d) (%d+) %-$'

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
    Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Seconds since the epoch of a log time stamp (its own algorithm: count the days).
local function epoch(d, mon, y, h, mi, s, zone)
    local days = 0
    for year = 1970, y - 1 do
        days = days + ((year % 4 == 0 and (year % 100 ~= 0 or year % 400 == 0)) and 366 or 365)
    end
    local mdays = { 31, (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) and 29 or 28,
        31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
    for m = 1, MONTHS[mon] - 1 do days = days + mdays[m] end
    days = days + d - 1
    local off = (tonumber(zone:sub(2, 3)) * 60 + tonumber(zone:sub(4, 5))) * 60
    if zone:sub(1, 1) == "-" then off = -off end
    return days * 86400 + h * 3600 + mi * 60 + s - off
end

-- Parses one line: a record of its fields, or nil for a line of neither format.
local function parse(l)
    local ip, user, d, mon, y, h, mi, s, zone, method, target, proto, status, size, ref, ua =
        l:match(COMBINED)
    if ip then
        return { fmt = "combined", ip = ip, user = user, day = tonumber(d), mon = mon, zone = zone,
            t = epoch(tonumber(d), mon, tonumber(y), tonumber(h), tonumber(mi), tonumber(s), zone),
            method = method, target = target, proto = proto, status = tonumber(status),
            size = tonumber(size), ref = ref, ua = ua }
    end
    local session, scheme, host, port, path
    ip, session, user, d, mon, y, h, mi, s, zone, method, scheme, host, port, path, proto, status,
        size = l:match(PROXY)
    if ip then
        return { fmt = "proxy", ip = ip, session = session, user = user, day = tonumber(d),
            mon = mon, zone = zone,
            t = epoch(tonumber(d), mon, tonumber(y), tonumber(h), tonumber(mi), tonumber(s), zone),
            method = method, scheme = scheme, host = host, port = tonumber(port), target = path,
            proto = proto, status = tonumber(status), size = tonumber(size) }
    end
    return nil
end

local function ipv4(ip)
    local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    if not a then return nil end
    a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
    if a > 255 or b > 255 or c > 255 or d > 255 then return nil end
    return ((a * 256 + b) * 256 + c) * 256 + d, a, b
end

local function private_v4(ip)
    local _, a, b = ipv4(ip)
    return a == 10 or (a == 172 and b >= 16 and b < 32) or (a == 192 and b == 168)
end

-- The first lines of --seed 3 with the built-in ranges (no dependence on the machine's files).
local GOLDEN = [=[
179.118.254.34 - - [31/Oct/2022:19:00:00 -0500] "GET /search?q=lua HTTP/1.1" 200 9042 "-" "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:106.0) Gecko/20100101 Firefox/106.0"
41.83.241.141 - - [31/Oct/2022:19:00:00 -0500] "GET /category/music HTTP/1.1" 200 5255 "https://shop.example.com/cart" "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:106.0) Gecko/20100101 Firefox/106.0"
126.108.213.121 - - [31/Oct/2022:19:00:00 -0500] "GET https://shop.example.com:443/products/4868 HTTP/2.0" 200 15991 -
126.80.148.61 - - [01/Nov/2022:05:30:00 +0530] "GET https://intranet.example.com:8443/products/43825 HTTP/1.1" 200 30451 -
24.15.25.201 - - [01/Nov/2022:01:00:00 +0100] "GET /static/css/main.af0ddf57.css HTTP/1.1" 200 44480 "https://www.example.com/cart" "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/107.0.0.0 Safari/537.36"
79.54.93.217 - - [31/Oct/2022:19:00:00 -0500] "GET / HTTP/1.1" 200 14357 "https://www.example.com/products/3411" "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/107.0.0.0 Safari/537.36"
]=]

local function count(t, k) t[k] = (t[k] or 0) + 1 end

local function hash(s)
    local ok, sha = pcall(require, "lproc.sha256")
    if ok and type(sha) == "table" and type(sha.hex) == "function" then return sha.hex(s) end
    return s
end

-- One shared sample: 20000 lines, default options but the seed.
local SAMPLE = gen({ "--seed", "42", "--lines", "20000" })
local RECS, BAD = {}, {}
for _, l in ipairs(lines_of(SAMPLE)) do
    local r = parse(l)
    if r then RECS[#RECS + 1] = r else BAD[#BAD + 1] = l end
end

T.test("--help prints the usage on stdout", function()
    local out, err, code = gen({ "--help" })
    T.eq(code, 0, "exit code")
    T.eq(err, "")
    T.eq(out:match("^[^\n]*"), "usage: lproc scripts/genlog.lua [options]")
    for _, opt in ipairs({ "--lines", "--seed", "--malformed", "--formats", "--start", "--rate",
                           "--output", "--geoip", "--help" }) do
        T.ok(out:find("\n  " .. opt .. " ", 1, true), "usage names " .. opt)
    end
end)

T.test("bad arguments: a message on stderr, exit 2, no output", function()
    local cases = {
        { { "--bogus" }, "genlog: unknown option '--bogus' (try --help)\n" },
        { { "extra" }, "genlog: unknown option 'extra' (try --help)\n" },
        { { "--lines" }, "genlog: option --lines needs a value (try --help)\n" },
        { { "--lines", "ten" }, "genlog: --lines: not a count: ten (try --help)\n" },
        { { "--lines", "-1" }, "genlog: --lines: not a count: -1 (try --help)\n" },
        { { "--lines", "1.5" }, "genlog: --lines: not a count: 1.5 (try --help)\n" },
        { { "--seed", "x" }, "genlog: --seed: not an integer: x (try --help)\n" },
        { { "--malformed", "1.5" },
          "genlog: --malformed: not a fraction between 0 and 1: 1.5 (try --help)\n" },
        { { "--malformed=-0.1" },
          "genlog: --malformed: not a fraction between 0 and 1: -0.1 (try --help)\n" },
        { { "--formats", "proxy,json" },
          "genlog: --formats: unknown format 'json' (proxy, combined) (try --help)\n" },
        { { "--formats", "," }, "genlog: --formats: no format given (try --help)\n" },
        { { "--start", "2022-13-01T00:00:00" },
          "genlog: --start: not a time YYYY-MM-DDTHH:MM:SS: 2022-13-01T00:00:00 (try --help)\n" },
        { { "--start", "2022-11-01T00:00:00+5" },
          "genlog: --start: not a time YYYY-MM-DDTHH:MM:SS: 2022-11-01T00:00:00+5 (try --help)\n" },
        { { "--rate", "0" }, "genlog: --rate: not a positive number: 0 (try --help)\n" },
        { { "--rate", "nan" }, "genlog: --rate: not a positive number: nan (try --help)\n" },
    }
    for _, c in ipairs(cases) do
        local out, err, code = gen(c[1])
        T.eq({ out, err, code }, { "", c[2], 2 }, table.concat(c[1], " "))
    end
end)

T.test("an output file that cannot be created: exit 1", function()
    local out, err, code = gen({ "--lines", "3", "--output", TMP .. "/no/such/dir/x.log" })
    T.eq({ out, err, code },
        { "", "genlog: " .. TMP .. "/no/such/dir/x.log: No such file or directory\n", 1 })
end)

T.test("the same seed gives the same bytes; another seed, other bytes", function()
    local a = gen({ "--seed", "42", "--lines", "20000" })
    T.eq(#a, #SAMPLE, "length")
    T.ok(hash(a) == hash(SAMPLE), "same seed, same output")
    local b = gen({ "--seed", "43", "--lines", "20000" })
    T.ok(hash(b) ~= hash(SAMPLE), "another seed, another output")
    -- "--opt=value" is "--opt value"; --output writes what stdout would get.
    local path = TMP .. "/genlog-file.log"
    local out, err, code = gen({ "--seed=42", "--lines=20000", "--output", path })
    T.eq({ out, err, code }, { "", "", 0 })
    T.ok(hash(slurp(path)) == hash(SAMPLE), "--output file equals stdout")
    os.remove(path)
    -- A prefix of a longer run is the shorter run.
    local short = gen({ "--seed", "42", "--lines", "100" })
    T.eq(SAMPLE:sub(1, #short), short, "first 100 lines")
end)

T.test("exactly --lines lines, each ending in a newline", function()
    for _, n in ipairs({ 0, 1, 2047, 2048, 2049 }) do
        local out, err, code = gen({ "--lines", tostring(n), "--seed", "5", "--malformed", "0.2" })
        T.eq(code, 0, "exit code")
        T.eq(err, "")
        local _, nl = out:gsub("\n", "")
        T.eq(nl, n, "newlines for --lines " .. n)
        T.ok(n == 0 and out == "" or out:sub(-1) == "\n", "ends with a newline")
    end
end)

T.test("both formats are mixed, about half each", function()
    local n = {}
    for _, r in ipairs(RECS) do count(n, r.fmt) end
    T.ok(n.proxy > 0.4 * #RECS and n.combined > 0.4 * #RECS,
        "proxy " .. tostring(n.proxy) .. ", combined " .. tostring(n.combined))
    for _, f in ipairs({ "proxy", "combined" }) do
        local only = gen({ "--formats", f, "--lines", "3000", "--malformed", "0" })
        for _, l in ipairs(lines_of(only)) do
            local r = parse(l)
            T.ok(r and r.fmt == f, "a " .. f .. " line: " .. l)
        end
    end
end)

T.test("--malformed: the share of lines of neither format", function()
    T.ok(#BAD >= 140 and #BAD <= 270, "default 1% of 20000: got " .. #BAD)
    local none = gen({ "--malformed", "0", "--lines", "20000", "--seed", "9" })
    local bad = 0
    for _, l in ipairs(lines_of(none)) do if not parse(l) then bad = bad + 1 end end
    T.eq(bad, 0, "malformed lines with --malformed 0")
    local some = gen({ "--malformed", "0.05", "--lines", "20000", "--seed", "9" })
    bad = 0
    for _, l in ipairs(lines_of(some)) do if not parse(l) then bad = bad + 1 end end
    T.ok(bad >= 850 and bad <= 1150, "5% of 20000: got " .. bad)
    local all = lines_of(gen({ "--malformed", "1", "--lines", "4000", "--seed", "9" }))
    T.eq(#all, 4000, "lines")
    local kinds = {}
    for _, l in ipairs(all) do
        T.eq(parse(l), nil, "a malformed line parsed")
        if l == "" then count(kinds, "empty") end
        if l:find('"\\x16\\x03\\x01', 1, true) and l:find('" 400 157 "%-" "%-"$') then
            count(kinds, "tls")
        end
        if l:find(' "%-" 400 0 "%-" "%-"$') then count(kinds, "no request") end
        if l:find("[\0\128-\255]") then count(kinds, "binary") end
        if l:find(" [error] ", 1, true) then count(kinds, "error log") end
        if l:find('^{"time":') then count(kinds, "json") end
        if l:find("^%S+ %S+ %S+ %[") then count(kinds, "cut") end
    end
    for _, k in ipairs({ "empty", "tls", "no request", "binary", "error log", "json", "cut" }) do
        T.ok((kinds[k] or 0) > 4000 / 8 * 0.6, k .. " lines: " .. tostring(kinds[k]))
    end
end)

T.test("client addresses: public, repeated, IPv4 and IPv6, a few private", function()
    local seen, private, v6, distinct = {}, 0, 0, 0
    local deliberate = { ["10.0.3.17"] = true, ["10.12.0.5"] = true, ["172.16.8.2"] = true,
        ["192.168.1.20"] = true }
    for _, r in ipairs(RECS) do
        if not seen[r.ip] then distinct = distinct + 1 end
        count(seen, r.ip)
        if r.ip:find(":", 1, true) then
            v6 = v6 + 1
            local groups = 0
            for g in (r.ip .. ":"):gmatch("(%x%x?%x?%x?):") do groups = groups + 1 end
            T.ok(groups == 8 and #r.ip <= 39 and not r.ip:find("::", 1, true), "IPv6 " .. r.ip)
        else
            T.ok(ipv4(r.ip), "IPv4 " .. r.ip)
            if private_v4(r.ip) then
                private = private + 1
                T.ok(deliberate[r.ip], "an unexpected private address " .. r.ip)
            end
            local _, a = ipv4(r.ip)
            T.ok(a ~= 0 and a ~= 127 and a < 224, "a reserved address " .. r.ip)
        end
    end
    T.ok(private >= 10 and private <= 0.01 * #RECS, "private addresses: " .. private)
    T.ok(v6 >= 50 and v6 <= 0.15 * #RECS, "IPv6 lines: " .. v6)
    T.ok(distinct >= 400 and distinct <= 2010, "distinct addresses: " .. distinct)
    local top = 0
    for _, n in pairs(seen) do if n > top then top = n end end
    T.ok(top >= 0.04 * #RECS, "busiest client's lines: " .. top)
end)

-- The country of every public IPv4 client of recs, by tor-geoipdb: fails on an address in no
-- range or in a country not chosen; returns the number of countries seen (nil without the file).
local function check_countries(recs)
    local f = io.open(GEOIP, "rb")
    if not f then
        io.stdout:write("       (skipped: no ", GEOIP, ")\n")
        return nil
    end
    local data = f:read("a")
    f:close()
    local lo, hi, cc = {}, {}, {}
    for a, b, c in data:gmatch("(%d+),(%d+),(%u%u)") do
        lo[#lo + 1], hi[#hi + 1], cc[#cc + 1] = tonumber(a), tonumber(b), c
    end
    local wanted = { US = 1, FR = 1, DE = 1, GB = 1, JP = 1, BR = 1, IN = 1, CN = 1, CA = 1, NL = 1,
        ES = 1, IT = 1, RU = 1, SN = 1, MA = 1 }
    local countries, checked = {}, {}
    for _, r in ipairs(recs) do
        local n = ipv4(r.ip)
        if n and not private_v4(r.ip) and not checked[r.ip] then
            checked[r.ip] = true
            local i, j = 1, #lo
            while i < j do     -- the last range starting at or below n
                local m = (i + j + 1) // 2
                if lo[m] <= n then i = m else j = m - 1 end
            end
            T.ok(lo[i] <= n and n <= hi[i] and wanted[cc[i]],
                r.ip .. " is in a range of " .. tostring(cc[i]))
            countries[cc[i]] = true
        end
    end
    local n = 0
    for _ in pairs(countries) do n = n + 1 end
    return n
end

T.test("IPv4 clients come from the chosen countries of tor-geoipdb", function()
    local n = check_countries(RECS)
    if n then T.eq(n, 15, "countries seen") end
end)

T.test("without the geoip file: a warning and built-in ranges of the same countries", function()
    local out, err, code = gen({ "--geoip", TMP .. "/none", "--lines", "5000", "--seed", "42" })
    T.eq(code, 0)
    T.eq(err, "genlog: " .. TMP .. "/none: cannot read it; using built-in address ranges\n")
    T.ok(out ~= SAMPLE:sub(1, #out), "other addresses")
    local recs = {}
    for _, l in ipairs(lines_of(out)) do
        local r = parse(l)
        if r then
            recs[#recs + 1] = r
            if ipv4(r.ip) and not private_v4(r.ip) then
                local _, a = ipv4(r.ip)
                T.ok(a ~= 0 and a ~= 127 and a < 224, r.ip)
            end
        end
    end
    T.ok(#recs > 4900, "lines " .. #recs)
    local n = check_countries(recs)
    if n then T.eq(n, 15, "countries seen") end
end)

T.test("fields: methods, statuses, sizes, time zones, hosts, sessions, users, agents", function()
    local methods, statuses, zones, hosts, protos = {}, {}, {}, {}, {}
    local jsession, sid, query, bots, mobile, tablet, refs = 0, 0, 0, {}, 0, 0, 0
    for _, r in ipairs(RECS) do
        count(methods, r.method)
        count(statuses, r.status)
        count(zones, r.zone)
        count(protos, r.proto)
        T.ok(r.day >= 1 and r.day <= 31 and MONTHS[r.mon], "date")
        if r.status == 304 or r.status == 499 or r.method == "HEAD" then
            T.eq(r.size, 0, "size of a " .. r.status .. " " .. r.method)
        end
        if r.target:find(";jsessionid=%x+") then jsession = jsession + 1 end
        if r.target:find("?sid=%x+") then sid = sid + 1 end
        if r.target:find("?", 1, true) then query = query + 1 end
        if r.fmt == "proxy" then
            count(hosts, r.host .. ":" .. r.port)
            T.ok(r.session == "-" or r.session:find("^" .. ("%w"):rep(15) .. "$"),
                "session " .. r.session)
            T.ok(r.user == "-" or r.user:find("^[%l]+[%l%d]*$")
                or r.user:find("^[%l]+%.[%l]+@[%l.]+%.%l+$"), "user " .. r.user)
        else
            T.ok(r.user == "-" or r.user:find("^[%l.%d]+$"), "user " .. r.user)
            local bot = r.ua:match("(%a+bot)/") or r.ua:match("^(curl)/")
            if bot then count(bots, bot) end
            if r.ua:find("iPhone", 1, true) or r.ua:find("Mobile Safari", 1, true) then
                mobile = mobile + 1
            end
            if r.ua:find("iPad", 1, true) then tablet = tablet + 1 end
            if r.ref ~= "-" then refs = refs + 1 end
        end
    end
    local N = #RECS
    T.ok(methods.GET > 0.85 * N, "GET " .. methods.GET)
    for _, m in ipairs({ "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PROPFIND" }) do
        T.ok(methods[m] and methods[m] < 0.05 * N, m .. " " .. tostring(methods[m]))
    end
    T.ok(methods.PROPFIND < 0.005 * N, "PROPFIND is rare")
    T.ok(statuses[200] > 0.5 * N, "200 " .. statuses[200])
    for _, s in ipairs({ 301, 302, 304, 403, 404, 499, 500, 502, 503, 906 }) do
        T.ok(statuses[s] and statuses[s] < 0.25 * N, s .. " " .. tostring(statuses[s]))
    end
    T.ok(statuses[906] < 0.002 * N, "906 is rare")
    local zone_list = {}
    for z in pairs(zones) do zone_list[#zone_list + 1] = z end
    table.sort(zone_list)
    T.eq(zone_list, { "+0000", "+0100", "+0530", "-0500" })
    T.eq(protos["HTTP/1.1"] > 0.6 * N and protos["HTTP/2.0"] > 0 and protos["HTTP/1.0"] > 0, true)
    for _, h in ipairs({ "www.example.com:443", "shop.example.com:443", "api.example.net:443",
                         "intranet.example.com:8443", "legacy.example.com:80",
                         "dav.example.net:8080" }) do
        T.ok(hosts[h], "host " .. h)
    end
    T.ok(jsession > 20 and sid > 20 and query > 0.05 * N,
        "jsessionid " .. jsession .. ", sid " .. sid .. ", queries " .. query)
    for _, b in ipairs({ "Googlebot", "bingbot", "curl" }) do T.ok(bots[b], "agent " .. b) end
    T.ok(mobile > 0.1 * N / 2 and tablet > 0, "mobile " .. mobile .. ", tablets " .. tablet)
    T.ok(refs > 0.3 * N / 2, "referrers " .. refs)
end)

T.test("--start and --rate: time goes forward, nearly in order", function()
    local out = gen({ "--start", "2022-11-01T00:00:00", "--rate", "10", "--lines", "5000",
                      "--malformed", "0", "--seed", "3" })
    local start = 1667260800   -- 2022-11-01T00:00:00Z
    local first, last, high = nil, nil, -math.huge
    for _, l in ipairs(lines_of(out)) do
        local r = parse(l)
        first = first or r.t
        T.ok(r.t >= high - 4, "out of order by more than 4 s: " .. l)
        if r.t > high then high = r.t end
        last = r.t
    end
    T.ok(first >= start - 4 and first <= start + 2, "first line at " .. first - start)
    T.ok(last >= start + 440 and last <= start + 560, "last line at " .. last - start)
    -- A time zone in --start: the same instant written another way.
    local a = gen({ "--start", "2022-11-01T00:00:00-05:00", "--lines", "50", "--seed", "3" })
    local b = gen({ "--start", "2022-11-01T05:00:00Z", "--lines", "50", "--seed", "3" })
    T.eq(a, b)
    local r = parse(lines_of(gen({ "--start", "2022-11-01T00:00:00-05:00", "--lines", "1",
                                   "--seed", "1", "--formats", "proxy", "--malformed", "0" }))[1])
    T.eq(r.t - (start + 5 * 3600) >= -4 and r.t - (start + 5 * 3600) <= 1, true)
end)

T.test("golden output of a small run (built-in ranges)", function()
    local out = gen({ "--geoip", TMP .. "/none", "--seed", "3", "--lines", "6" })
    T.eq(out, GOLDEN)
end)

T.done()
