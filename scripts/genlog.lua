-- genlog.lua: a deterministic generator of realistic web-server access logs.
--
--   lproc scripts/genlog.lua [options]      (plain Lua 5.4 also runs it)
--
-- Mixes nginx "combined" lines and the original project's "proxy" lines:
--
--   combined: IP - USER [dd/Mon/yyyy:HH:MM:SS +zzzz] "METHOD TARGET PROTO" STATUS BYTES "REF" "UA"
--   proxy:    IP SESSION USER [dd/Mon/yyyy:HH:MM:SS +zzzz] "METHOD URL PROTO" STATUS BYTES -
--
-- with public client addresses of ~15 countries (from Debian's tor-geoipdb when it is there),
-- Zipf-like client and resource popularity, a few IPv6 and private clients, bots, and a
-- --malformed fraction of broken lines. The same options and seed give the same bytes: the
-- randomness is our own splitmix64, not math.random.

local USAGE = [[
usage: lproc scripts/genlog.lua [options]

Writes a realistic, deterministic web-server access log.

  --lines N             number of lines, malformed ones included (default 1000)
  --seed S              seed of the generator, an integer (default 1)
  --malformed FRACTION  share of malformed lines, 0..1 (default 0.01): truncated lines,
                        junk bytes, TLS handshakes and "-" requests as nginx logs them,
                        empty lines, lines of other formats
  --formats LIST        comma-separated formats to mix: proxy, combined (default both)
  --start TIME          time of the first line, YYYY-MM-DDTHH:MM:SS, UTC unless followed
                        by Z or +HH:MM / -HH:MM (default 2022-11-01T00:00:00)
  --rate R              mean lines per second of log time (default 20)
  --output FILE         write to FILE instead of standard output
  --geoip FILE          tor-geoipdb file "LOW,HIGH,CC" to take client addresses from
                        (default /usr/share/tor/geoip; built-in ranges if it is missing)
  --help                show this help
]]

local DEFAULT_GEOIP = "/usr/share/tor/geoip"

local floor, exp, log = math.floor, math.exp, math.log
local concat = table.concat
local format, char, sub = string.format, string.char, string.sub

-- ---------------------------------------------------------------- options

-- Raises a usage error that main() turns into a message and exit status 2.
local function usage_error(msg)
    error({ usage = msg }, 0)
end

-- Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
local function days_from_civil(y, m, d)
    y = m <= 2 and y - 1 or y
    local era = (y >= 0 and y or y - 399) // 400
    local yoe = y - era * 400
    local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
    local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
end

-- Parses "YYYY-MM-DDTHH:MM:SS[Z|+HH:MM|-HH:MM]" into seconds since the epoch; nil if invalid.
local function parse_time(s)
    local y, mo, d, h, mi, se, zone =
        s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d):(%d%d)(.*)$")
    if not y then return nil end
    y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
    h, mi, se = tonumber(h), tonumber(mi), tonumber(se)
    if mo < 1 or mo > 12 or d < 1 or d > 31 or h > 23 or mi > 59 or se > 60 then return nil end
    local off = 0
    if zone ~= "" and zone ~= "Z" then
        local sign, zh, zm = zone:match("^([+-])(%d%d):?(%d%d)$")
        if not sign then return nil end
        off = (tonumber(zh) * 60 + tonumber(zm)) * 60
        if sign == "-" then off = -off end
    end
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - off
end

-- Parses the command line (a sequence of strings) into the options; raises a usage error.
local function parse_args(args)
    local o = {
        lines = 1000, seed = 1, malformed = 0.01, formats = { "proxy", "combined" },
        start = parse_time("2022-11-01T00:00:00"), rate = 20, geoip = DEFAULT_GEOIP,
    }
    -- "--opt=value" is "--opt value".
    local expanded = {}
    for _, a in ipairs(args) do
        local name, v = a:match("^(%-%-[%w-]+)=(.*)$")
        if name then
            expanded[#expanded + 1], expanded[#expanded + 2] = name, v
        else
            expanded[#expanded + 1] = a
        end
    end
    args = expanded
    local i = 1
    local function value(name)
        local v = args[i + 1]
        if v == nil then usage_error("option " .. name .. " needs a value") end
        i = i + 2
        return v
    end
    while i <= #args do
        local a = args[i]
        if a == "--help" or a == "-h" then
            o.help = true
            i = i + 1
        elseif a == "--lines" then
            local v = value(a)
            o.lines = math.tointeger(tonumber(v))
            if not o.lines or o.lines < 0 then usage_error("--lines: not a count: " .. v) end
        elseif a == "--seed" then
            local v = value(a)
            o.seed = math.tointeger(tonumber(v))
            if not o.seed then usage_error("--seed: not an integer: " .. v) end
        elseif a == "--malformed" then
            local v = value(a)
            o.malformed = tonumber(v)
            if not o.malformed or o.malformed < 0 or o.malformed > 1 then
                usage_error("--malformed: not a fraction between 0 and 1: " .. v)
            end
        elseif a == "--formats" then
            local v = value(a)
            local list, seen = {}, {}
            for f in v:gmatch("[^,]+") do
                if f ~= "proxy" and f ~= "combined" then
                    usage_error("--formats: unknown format '" .. f .. "' (proxy, combined)")
                end
                if not seen[f] then list[#list + 1], seen[f] = f, true end
            end
            if #list == 0 then usage_error("--formats: no format given") end
            o.formats = list
        elseif a == "--start" then
            local v = value(a)
            o.start = parse_time(v)
            if not o.start then usage_error("--start: not a time YYYY-MM-DDTHH:MM:SS: " .. v) end
        elseif a == "--rate" then
            local v = value(a)
            o.rate = tonumber(v)
            if not o.rate or not (o.rate > 0) or o.rate == math.huge then
                usage_error("--rate: not a positive number: " .. v)
            end
        elseif a == "--output" or a == "-o" then
            o.output = value(a)
        elseif a == "--geoip" then
            o.geoip = value(a)
        else
            usage_error("unknown option '" .. a .. "'")
        end
    end
    return o
end

-- ---------------------------------------------------------------- randomness

-- splitmix64 over Lua's wrapping 64-bit integers. Returns:
--   bits()   53 random bits, an integer in [0, 2^53)
--   int(n)   an integer in [0, n)
--   unit()   a float in [0, 1)
--   pick(t)  a random element of the sequence t
-- Each function steps the generator itself: a nested call would cost a third of the time.
local function new_rng(seed)
    local state = seed
    local function bits()
        state = state + 0x9E3779B97F4A7C15
        local z = state
        z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ~ (z >> 27)) * 0x94D049BB133111EB
        return (z ~ (z >> 31)) >> 11
    end
    local function int(n)
        state = state + 0x9E3779B97F4A7C15
        local z = state
        z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ~ (z >> 27)) * 0x94D049BB133111EB
        return ((z ~ (z >> 31)) >> 11) % n
    end
    local function unit()
        state = state + 0x9E3779B97F4A7C15
        local z = state
        z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ~ (z >> 27)) * 0x94D049BB133111EB
        return ((z ~ (z >> 31)) >> 11) * 0x1p-53
    end
    local function pick(t)
        state = state + 0x9E3779B97F4A7C15
        local z = state
        z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ~ (z >> 27)) * 0x94D049BB133111EB
        return t[((z ~ (z >> 31)) >> 11) % #t + 1]
    end
    return { bits = bits, int = int, unit = unit, pick = pick }
end

-- A sampler of weighted choices (Walker's alias method): weights is a sequence of
-- non-negative numbers; returns a function that draws index k with probability
-- weights[k] / sum, from one draw of 53 bits (the index from its remainder, the
-- biased coin from its quotient).
local function weighted(weights, rng)
    local n, total = #weights, 0
    for k = 1, n do total = total + weights[k] end
    local prob, alias, small, large = {}, {}, {}, {}
    for k = 1, n do
        local p = weights[k] * n / total
        prob[k] = p
        if p < 1 then small[#small + 1] = k else large[#large + 1] = k end
    end
    while #small > 0 and #large > 0 do
        local s, l = small[#small], large[#large]
        small[#small] = nil
        alias[s] = l
        prob[l] = prob[l] + prob[s] - 1
        if prob[l] < 1 then
            large[#large] = nil
            small[#small + 1] = l
        end
    end
    for _, k in ipairs(small) do prob[k], alias[k] = 1, k end
    for _, k in ipairs(large) do prob[k], alias[k] = 1, k end
    local bits, scale = rng.bits, n * 0x1p-53
    return function()
        local r = bits()
        local k = r % n + 1
        if (r // n) * scale < prob[k] then return k end
        return alias[k]
    end
end

-- A Zipf-like sampler over 1..n (popularity of rank r ~ 1 / r^s).
local function zipf(n, s, rng)
    local w = {}
    for r = 1, n do w[r] = 1 / r ^ s end
    return weighted(w, rng)
end

-- A weighted choice among pairs {value, weight}: returns a function drawing a value.
local function choice(pairs_, rng)
    local values, weights = {}, {}
    for k, p in ipairs(pairs_) do values[k], weights[k] = p[1], p[2] end
    local draw = weighted(weights, rng)
    return function() return values[draw()] end
end

-- ---------------------------------------------------------------- clients

-- Countries of the clients and their weights.
local COUNTRIES = {
    { "US", 26 }, { "FR", 10 }, { "DE", 9 }, { "GB", 8 }, { "CN", 7 }, { "IN", 7 }, { "JP", 5 },
    { "BR", 5 }, { "CA", 4 }, { "NL", 4 }, { "RU", 4 }, { "ES", 3 }, { "IT", 3 }, { "SN", 2 },
    { "MA", 2 },
}

-- Used when the tor-geoipdb file is missing: a few public ranges per country
-- (dotted low address, dotted high address, country).
local BUILTIN_RANGES = {
    { "24.0.0.0", "24.15.255.255", "US" }, { "73.0.0.0", "73.255.255.255", "US" },
    { "98.192.0.0", "98.255.255.255", "US" }, { "176.128.0.0", "176.191.255.255", "FR" },
    { "86.192.0.0", "86.225.255.255", "FR" }, { "84.128.0.0", "84.191.255.255", "DE" },
    { "91.0.0.0", "91.15.255.255", "DE" }, { "81.128.0.0", "81.159.255.255", "GB" },
    { "86.128.0.0", "86.191.255.255", "GB" }, { "126.64.0.0", "126.127.255.255", "JP" },
    { "179.112.0.0", "179.127.255.255", "BR" }, { "117.192.0.0", "117.255.255.255", "IN" },
    { "183.0.0.0", "183.63.255.255", "CN" }, { "174.88.0.0", "174.95.255.255", "CA" },
    { "145.134.0.0", "145.175.255.255", "NL" }, { "83.32.0.0", "83.63.255.255", "ES" },
    { "79.0.0.0", "79.63.255.255", "IT" }, { "95.24.0.0", "95.31.255.255", "RU" },
    { "41.82.0.0", "41.83.255.255", "SN" }, { "105.128.0.0", "105.159.255.255", "MA" },
}

-- Public IPv6 prefixes of large access networks (the first three groups of an address).
local V6_PREFIXES = {
    "2a01:cb00:84a:", "2a01:e0a:5b1:", "2a02:8108:1240:", "2600:1700:3e10:", "2601:204:c001:",
    "2409:4040:e8d:", "2804:14c:65c1:", "2400:4051:a2e0:", "2a00:23c6:7e06:",
}

local function ipv4_int(s)
    local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    return ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
end

local function ipv4_str(n)
    return (n >> 24) .. "." .. ((n >> 16) & 255) .. "." .. ((n >> 8) & 255) .. "." .. (n & 255)
end

-- True for addresses that are not public unicast: 0/8, 10/8, 100.64/10, 127/8, 169.254/16,
-- 172.16/12, 192.0.0/24, 192.0.2/24, 192.168/16, 198.18/15, 198.51.100/24, 203.0.113/24, 224/3,
-- and the .0 / .255 ends of a /24 (they look odd in a log).
local function unusable_v4(n)
    local a, b, c, d = n >> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255
    return a == 0 or a == 10 or a == 127 or a >= 224 or (a == 100 and b >= 64 and b < 128)
        or (a == 169 and b == 254) or (a == 172 and b >= 16 and b < 32)
        or (a == 192 and b == 168) or (a == 192 and b == 0 and (c == 0 or c == 2))
        or (a == 198 and (b == 18 or b == 19)) or (a == 198 and b == 51 and c == 100)
        or (a == 203 and b == 0 and c == 113) or d == 0 or d == 255
end

-- Reads the ranges of our countries from a tor-geoipdb file; nil, why when it cannot be read.
local function read_geoip(path, wanted)
    local f, err = io.open(path, "rb")
    if not f then return nil, err end
    local data = f:read("a")
    f:close()
    local by_cc, tonumber_ = {}, tonumber
    for lo, hi, cc in data:gmatch("(%d+),(%d+),(%u%u)") do
        if wanted[cc] then
            local t = by_cc[cc]
            if not t then t = {}; by_cc[cc] = t end
            local n = #t
            t[n + 1], t[n + 2] = tonumber_(lo), tonumber_(hi)
        end
    end
    return by_cc
end

-- Ranges of our countries from path or the built-in list: { CC = { lo1, hi1, lo2, hi2, ... } }
-- (flat: a table per range would double the start-up time).
local function load_ranges(path)
    local wanted = {}
    for _, c in ipairs(COUNTRIES) do wanted[c[1]] = true end
    local by_cc = read_geoip(path, wanted)
    local complete = by_cc ~= nil
    for _, c in ipairs(COUNTRIES) do
        if complete and not by_cc[c[1]] then complete = false end
    end
    if not complete then
        if by_cc == nil then
            io.stderr:write("genlog: ", path, ": cannot read it; using built-in address ranges\n")
        else
            io.stderr:write("genlog: ", path,
                ": countries missing; using built-in address ranges\n")
        end
        by_cc = {}
        for _, r in ipairs(BUILTIN_RANGES) do
            local t = by_cc[r[3]] or {}
            by_cc[r[3]] = t
            t[#t + 1], t[#t + 2] = ipv4_int(r[1]), ipv4_int(r[2])
        end
    end
    return by_cc
end

-- Browsers (with the share of clients using them), then bots.
local BROWSERS = {
    { "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/107.0.0.0 Safari/537.36", 24 },
    { "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/107.0.0.0 Safari/537.36 Edg/107.0.1418.26", 7 },
    { "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:106.0) Gecko/20100101 Firefox/106.0", 7 },
    { "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.1 Safari/605.1.15", 8 },
    { "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/107.0.0.0 Safari/537.36", 6 },
    { "Mozilla/5.0 (X11; Linux x86_64; rv:102.0) Gecko/20100101 Firefox/102.0", 3 },
    { "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/106.0.0.0 Safari/537.36", 2 },
    { "Mozilla/5.0 (iPhone; CPU iPhone OS 16_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.1 Mobile/15E148 Safari/604.1", 14 },
    { "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/107.0.0.0 Mobile Safari/537.36", 8 },
    { "Mozilla/5.0 (Linux; Android 12; SM-G991B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/107.0.0.0 Mobile Safari/537.36", 7 },
    { "Mozilla/5.0 (Linux; Android 12; SAMSUNG SM-A525F) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/18.0 Chrome/99.0.4844.88 Mobile Safari/537.36", 3 },
    { "Mozilla/5.0 (iPad; CPU OS 16_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.1 Mobile/15E148 Safari/604.1", 4 },
    { "Mozilla/5.0 (Linux; Android 12; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/107.0.0.0 Safari/537.36", 2 },
    { "curl/7.88.1", 1 },
    { "python-requests/2.28.1", 1 },
    { "Go-http-client/1.1", 1 },
    { "Wget/1.21.3", 1 },
}

-- Crawlers: user agent, a real range of theirs (dotted low address, size), popularity rank.
local BOTS = {
    { "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "66.249.64.1", 8190, 3 },
    { "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/107.0.5304.87 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "66.249.66.1", 254, 9 },
    { "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "157.55.39.1", 254, 6 },
    { "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "40.77.167.1", 254, 20 },
    { "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", "5.255.253.1", 254, 40 },
    { "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", "54.36.148.1", 254, 25 },
}

local FIRST = { "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "mallory", "oscar", "peggy", "rupert", "sybil", "trent", "victor", "walter", "amelie",
    "lucas", "moussa", "fatou", "yuki", "hiroshi", "priya", "arjun", "wei", "li", "ana", "joao" }
local LAST = { "martin", "smith", "muller", "dubois", "tanaka", "silva", "sharma", "wang", "diallo",
    "ndiaye", "rossi", "garcia", "ivanov", "jansen", "brown", "lefevre", "kumar", "sato" }
local MAIL_DOMAINS = { "example.com", "example.org", "example.net", "mail.example.com" }

local ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
local HEX = "0123456789abcdef"

local function random_string(int, alphabet, n)
    local t, m = {}, #alphabet
    for k = 1, n do
        local c = int(m) + 1
        t[k] = sub(alphabet, c, c)
    end
    return concat(t)
end

-- Builds the pool of clients, in popularity order (rank 1 is the busiest). A client is
-- { ip, ua, bot, user (proxy format), auth (combined format), session }.
local function make_clients(n, ranges, rng)
    local int, unit, pick = rng.int, rng.unit, rng.pick
    local cc_names, cc_weights = {}, {}
    for k, c in ipairs(COUNTRIES) do cc_names[k], cc_weights[k] = c[1], c[2] end
    local draw_cc = weighted(cc_weights, rng)
    -- Per country, a sampler of ranges weighted by their size (capped, so that a few huge
    -- blocks do not swallow everything).
    local range_draw = {}
    for _, name in ipairs(cc_names) do
        local list, w = ranges[name], {}
        for k = 1, #list // 2 do w[k] = math.min(list[2 * k] - list[2 * k - 1] + 1, 65536) end
        range_draw[name] = { list, weighted(w, rng) }
    end
    local draw_ua = choice(BROWSERS, rng)
    local used = {}

    local function new_ipv4()
        for _ = 1, 1000 do
            local rd = range_draw[cc_names[draw_cc()]]
            local list, k = rd[1], 2 * rd[2]()
            local a = list[k - 1] + int(list[k] - list[k - 1] + 1)
            if not unusable_v4(a) and not used[a] then used[a] = true; return ipv4_str(a) end
        end
        error("genlog: could not find a free client address")
    end

    local clients = {}
    for k = 1, n do
        local c = {}
        if unit() < 0.03 then
            c.ip = pick(V6_PREFIXES) .. format("%x:%x:%x:%x:%x", int(65536), int(65536),
                int(65536), int(65536), int(65536))
        else
            c.ip = new_ipv4()
        end
        c.ua = draw_ua()
        local u = unit()
        if u < 0.35 then
            local first, last = pick(FIRST), pick(LAST)
            if unit() < 0.5 then
                c.user = first .. "." .. last .. "@" .. pick(MAIL_DOMAINS)
            else
                c.user = first .. sub(last, 1, 1) .. (unit() < 0.3 and tostring(int(100)) or "")
            end
            c.auth = unit() < 0.2 and c.user:match("^[^@]+") or "-"
        else
            c.user, c.auth = "-", "-"
        end
        clients[k] = c
    end
    -- Crawlers sit at fixed popularity ranks.
    for _, b in ipairs(BOTS) do
        local c = clients[b[4]]
        c.ip = ipv4_str(ipv4_int(b[2]) + int(b[3]))
        c.ua, c.bot, c.user, c.auth = b[1], true, "-", "-"
    end
    return clients
end

-- Private clients (load balancers and monitoring, health checks): address, user agent.
local PRIVATE = {
    { ip = "10.0.3.17", ua = "kube-probe/1.25", path = "/healthz" },
    { ip = "10.12.0.5", ua = "ELB-HealthChecker/2.0", path = "/health" },
    { ip = "172.16.8.2", ua = "Prometheus/2.40.1", path = "/metrics" },
    { ip = "192.168.1.20", ua = "check_http/v2.3.3 (monitoring-plugins 2.3.3)", path = "/" },
}
for _, p in ipairs(PRIVATE) do
    p.user, p.auth, p.probe = "-", "-", { kind = "probe", path = p.path }
end

-- ---------------------------------------------------------------- resources

-- Virtual hosts: name, scheme, port, time zone (seconds, text).
local WWW = { "www.example.com", "https", 443, -18000, "-0500" }
local SHOP = { "shop.example.com", "https", 443, -18000, "-0500" }
local API = { "api.example.net", "https", 443, 3600, "+0100" }
local STATIC = { "static.example.org", "https", 443, 3600, "+0100" }
local INTRANET = { "intranet.example.com", "https", 8443, 19800, "+0530" }
local LEGACY = { "legacy.example.com", "http", 80, 19800, "+0530" }
local DAV = { "dav.example.net", "http", 8080, 0, "+0000" }

-- Which hosts serve each kind of resource, with their shares.
local SITES_OF = {
    static = { { STATIC, 50 }, { WWW, 25 }, { SHOP, 20 }, { LEGACY, 5 } },
    page = { { WWW, 50 }, { SHOP, 35 }, { INTRANET, 8 }, { LEGACY, 7 } },
    login = { { WWW, 60 }, { SHOP, 30 }, { INTRANET, 10 } },
    api = { { API, 80 }, { SHOP, 15 }, { INTRANET, 5 } },
    dav = { { DAV, 100 } },
    scan = { { WWW, 30 }, { SHOP, 20 }, { API, 15 }, { STATIC, 10 }, { LEGACY, 15 }, { DAV, 10 } },
    probe = { { WWW, 40 }, { API, 40 }, { DAV, 20 } },
}

local CATEGORIES = { "shoes", "books", "garden", "toys", "kitchen", "music", "sports", "beauty" }
local WORDS = { "red+shoes", "lua", "nginx", "rabbitmq", "coffee", "laptop", "gift+ideas",
    "caf%C3%A9", "t-shirt", "%E6%97%A5%E6%9C%AC", "winter+jacket", "usb-c", "book" }
local STATIC_EXT = {
    { "/static/css/main.", ".css", 8000, 60000 }, { "/static/js/app.", ".js", 40000, 600000 },
    { "/static/js/vendor.", ".js", 100000, 900000 }, { "/images/products/", ".jpg", 6000, 300000 },
    { "/images/banners/", ".webp", 20000, 200000 }, { "/fonts/inter.", ".woff2", 20000, 110000 },
}

-- Builds the catalogue of resources, in popularity order. A resource is
-- { kind, method, target (function or string), size range, site }.
local function make_resources(int, pick)
    local R = {}
    local function add(t) R[#R + 1] = t end
    -- Static assets with a fixed size each (same file, same size).
    for _ = 1, 60 do
        local e = pick(STATIC_EXT)
        local name = e[1] .. (e[2] == ".jpg" and tostring(1000 + int(9000))
            or random_string(int, HEX, 8)) .. e[2]
        local size = e[3] + int(e[4] - e[3])
        add({ kind = "static", path = name, size = size })
    end
    add({ kind = "static", path = "/favicon.ico", size = 15086 })
    add({ kind = "static", path = "/robots.txt", size = 67 })
    -- Pages.
    add({ kind = "page", path = "/" })
    add({ kind = "page", path = "/index.html" })
    for _, c in ipairs(CATEGORIES) do
        add({ kind = "page", path = "/category/" .. c, pages = true })
    end
    add({ kind = "page", path = "/products/", id = true })
    add({ kind = "page", path = "/search", search = true })
    add({ kind = "page", path = "/cart", jsession = true })
    add({ kind = "page", path = "/account/login", jsession = true })
    add({ kind = "page", path = "/account/orders", sid = true })
    add({ kind = "page", path = "/checkout", sid = true })
    add({ kind = "login", path = "/account/login", jsession = true, method = "POST" })
    -- API.
    add({ kind = "api", path = "/api/v1/products", list = true })
    add({ kind = "api", path = "/api/v1/products/", id = true })
    add({ kind = "api", path = "/api/v1/search", search = true })
    add({ kind = "api", path = "/api/v2/orders/", id = true, suffix = "/items" })
    add({ kind = "api", path = "/api/v1/cart", method = "POST" })
    add({ kind = "api", path = "/api/v1/cart/items/", id = true, method = "DELETE" })
    add({ kind = "api", path = "/api/v1/users/", id = true, method = "PUT" })
    add({ kind = "api", path = "/api/v1/products", list = true, method = "OPTIONS" })
    add({ kind = "api", path = "/api/v1/status", method = "HEAD" })
    add({ kind = "dav", path = "/dav/files/", method = "PROPFIND" })
    -- What scanners look for.
    for _, p in ipairs({ "/wp-login.php", "/.env", "/phpmyadmin/index.php", "/.git/config",
                         "/cgi-bin/luci", "/admin/config.php" }) do
        add({ kind = "scan", path = p })
    end
    -- Popularity order: shuffled, with the home page first, what scanners look for next to
    -- last and the methods other than GET last (they are rarer).
    for k = #R, 2, -1 do
        local j = int(k) + 1
        R[k], R[j] = R[j], R[k]
    end
    for k, r in ipairs(R) do
        if r.path == "/" then R[1], R[k] = R[k], R[1] end
    end
    local ordered = {}
    for pass = 1, 3 do
        for _, r in ipairs(R) do
            local class = r.method and 3 or r.kind == "scan" and 2 or 1
            if class == pass then ordered[#ordered + 1] = r end
        end
    end
    return ordered
end

-- ---------------------------------------------------------------- time

local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
    "Dec" }
local TWO, MONTH_NUM = {}, {}
for k = 0, 99 do TWO[k] = format("%02d", k) end
for k, m in ipairs(MONTHS) do MONTH_NUM[m] = TWO[k] end

-- "dd/Mon/yyyy" of a day number (days since 1970-01-01).
local function day_text(days)
    local z = days + 719468
    local era = (z >= 0 and z or z - 146096) // 146097
    local doe = z - era * 146097
    local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    local mp = (5 * doy + 2) // 153
    local d = doy - (153 * mp + 2) // 5 + 1
    local m = mp < 10 and mp + 3 or mp - 9
    if m <= 2 then y = y + 1 end
    return TWO[d] .. "/" .. MONTHS[m] .. "/" .. y
end

-- Returns stamp(utc_seconds, offset, offset_text) -> "dd/Mon/yyyy:HH:MM:SS +zzzz", caching the
-- day part per time zone.
local function new_stamper()
    local day_cache = {}
    return function(t, off, zone)
        local l = t + off
        local days, s = l // 86400, l % 86400
        local dc = day_cache[off]
        if not dc or dc[1] ~= days then
            dc = { days, day_text(days) }
            day_cache[off] = dc
        end
        return dc[2] .. ":" .. TWO[s // 3600] .. ":" .. TWO[s // 60 % 60] .. ":" .. TWO[s % 60]
            .. " " .. zone
    end
end

-- ---------------------------------------------------------------- lines

-- Returns gen() -> the next line (without its newline), given the options.
local function new_generator(o)
    local rng = new_rng(o.seed)
    local bits, int, unit, pick = rng.bits, rng.int, rng.unit, rng.pick
    local ranges = load_ranges(o.geoip)
    local clients = make_clients(2000, ranges, rng)
    local draw_client = zipf(#clients, 1.0, rng)
    local resources = make_resources(int, pick)
    local draw_resource = zipf(#resources, 0.9, rng)
    local site_of = {}
    for kind, list in pairs(SITES_OF) do site_of[kind] = choice(list, rng) end
    local stamp = new_stamper()
    local formats, nformats = o.formats, #o.formats
    local malformed = floor(o.malformed * 0x100000 + 0.5)   -- in 2^-20ths
    local mean_gap = 1 / o.rate
    local t = o.start + 0.0

    local draw_proto = choice({ { "HTTP/1.1", 80 }, { "HTTP/2.0", 18 }, { "HTTP/1.0", 2 } }, rng)
    local draw_ref_external = choice({
        { "https://www.google.com/", 50 }, { "https://www.bing.com/search?q=", 10 },
        { "https://duckduckgo.com/", 6 }, { "https://t.co/", 4 },
        { "https://www.facebook.com/", 5 }, { "android-app://com.google.android.gm/", 2 },
    }, rng)

    -- Status of a request for resource r by client c, and the response size.
    local function status_size(r, c, method)
        local kind, u = r.kind, unit()
        if u < 0.0005 then return 906, 0 end
        if kind == "probe" then return 200, 2 + int(3000) end
        if kind == "scan" then
            return (u < 0.9 and 404 or 403), 146 + int(400)
        end
        if u < 0.004 then return 499, 0 end
        if u < 0.007 then return 500, 580 + int(40) end
        if u < 0.010 then return 502, 552 + int(10) end
        if u < 0.012 then return 503, 190 + int(10) end
        if method == "HEAD" then return 200, 0 end
        if method == "OPTIONS" then return 204, 0 end
        if kind == "static" then
            if u < 0.22 then return 304, 0 end
            if u < 0.24 then return 404, 153 end
            return 200, r.size
        elseif kind == "page" then
            if u < 0.03 then return 301, 169 end
            if u < 0.06 then return 302, 145 end
            if u < 0.09 then return 404, 3500 + int(400) end
            if u < 0.10 then return 403, 153 end
            if u < 0.13 then return 304, 0 end
            return 200, floor(exp(8.5 + 2 * unit()))
        elseif kind == "login" then
            if u < 0.7 then return 302, 0 end
            if u < 0.8 then return 403, 153 end
            return 200, 4800 + int(300)
        elseif kind == "dav" then
            if u < 0.3 then return 207, 900 + int(5000) end
            if u < 0.8 then return 401, 381 end
            return 403, 153
        else -- api
            if u < 0.05 then return 404, 42 end
            if u < 0.08 then return (c.user == "-" and 401 or 403), 38 end
            if method == "POST" then return 201, 60 + int(400) end
            if method == "DELETE" then return 204, 0 end
            return 200, floor(exp(5 + 3.5 * unit()))
        end
    end

    -- The target (path and query) of a request for resource r by client c.
    local function target(r, c)
        local p = r.path
        if r.id then p = p .. (1000 + int(90000)) .. (r.suffix or "") end
        if r.jsession and (c.user ~= "-" or unit() < 0.3) then
            p = p .. ";jsessionid=" .. format("%08X%08X%08X%08X", int(0x100000000),
                int(0x100000000), int(0x100000000), int(0x100000000))
        end
        if r.sid then
            p = p .. "?sid=" .. format("%08x%08x%08x", int(0x100000000), int(0x100000000),
                int(0x100000000))
        elseif r.search then
            p = p .. "?q=" .. pick(WORDS) .. (unit() < 0.3 and "&page=" .. (2 + int(5)) or "")
        elseif r.list then
            p = p .. "?limit=" .. (10 * (1 + int(5))) .. "&offset=" .. (20 * int(20))
        elseif r.pages and unit() < 0.4 then
            p = p .. "?page=" .. (2 + int(9)) .. "&sort=" .. pick({ "price", "name", "new" })
        end
        return p
    end

    -- The Referer of a request for resource r on site: a page of ours, a search engine, none.
    local function referer(r, site)
        local u = unit()
        if r.kind == "static" and u < 0.9 or r.kind == "page" and u < 0.6 then
            if r.kind == "static" then site = unit() < 0.6 and WWW or SHOP end
            return site[2] .. "://" .. site[1] .. pick({ "/", "/cart", "/category/books",
                "/products/" .. (1000 + int(90000)), "/search?q=" .. pick(WORDS) })
        end
        if r.kind == "page" and u < 0.8 then
            local ref = draw_ref_external()
            if ref:sub(-3) == "?q=" then ref = ref .. pick(WORDS) end
            return ref
        end
        return "-"
    end

    -- One malformed line, of one of several kinds, from a well-formed one.
    local function broken(good, ip, ts)
        local k = int(8)
        if k == 0 then
            -- Truncated (a crash, a full disk): cut anywhere.
            return sub(good, 1, int(#good - 2) + 1)
        elseif k == 1 then
            -- Junk bytes, any value but the newline.
            local n, b = 1 + int(120), {}
            for j = 1, n do
                local v = int(255)
                b[j] = v >= 10 and v + 1 or v
            end
            return char(table.unpack(b))
        elseif k == 2 then
            -- A TLS ClientHello sent to the plain-HTTP port, as nginx logs it.
            local hello = { "\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xFC\\x03\\x03" }
            for j = 2, 6 + int(10) do hello[j] = format("\\x%02X", int(256)) end
            return ip .. " - - [" .. ts .. "] \"" .. concat(hello) .. "\" 400 157 \"-\" \"-\""
        elseif k == 3 then
            -- A connection closed before any request.
            return ip .. " - - [" .. ts .. "] \"-\" 400 0 \"-\" \"-\""
        elseif k == 4 then
            return ""
        elseif k == 5 then
            -- An error-log line in the access log.
            local d, mon, y, hms = ts:match("^(%d+)/(%a+)/(%d+):(%S+)")
            return y .. "/" .. MONTH_NUM[mon] .. "/" .. d .. " " .. hms .. " [error] "
                .. (900 + int(100))
                .. "#0: *" .. (1 + int(99999)) .. " open() \"/usr/share/nginx/html/favicon.ico\""
                .. " failed (2: No such file or directory), client: " .. ip
        elseif k == 6 then
            -- A JSON line from another service.
            return "{\"time\":\"" .. ts .. "\",\"remote_addr\":\"" .. ip
                .. "\",\"request\":\"GET / HTTP/1.1\",\"status\":200}"
        else
            -- Two writes interleaved: a cut line glued to the start of another.
            local cut = sub(good, 1, int(#good - 2) + 1)
            return cut .. sub(good, 1, 1 + int(20))
        end
    end

    return function()
        -- The line's yes/no choices come from one draw of 53 bits: bits 0-19 say whether it
        -- is malformed, 20-29 whether it is late (2%), 30-41 whether its client is a private
        -- one (0.3%), 42-48 whether a GET becomes a HEAD (0.8%), 49-52 its format.
        local coins = bits()
        t = t + -log(1 - unit()) * mean_gap
        local sec = floor(t)
        if (coins >> 20) & 1023 < 20 then sec = sec - 1 - int(3) end -- a slow request, logged late
        local fmt = formats[(coins >> 49) % nformats + 1]
        local c, ip, ua
        if (coins >> 30) & 4095 < 12 then
            c = pick(PRIVATE)
            ip, ua = c.ip, c.ua
        else
            c = clients[draw_client()]
            ip, ua = c.ip, c.ua
        end
        local r
        if c.probe then
            r = c.probe
        elseif c.bot then
            repeat r = resources[draw_resource()] until r.method == nil and r.kind ~= "scan"
        else
            r = resources[draw_resource()]
        end
        local site = site_of[r.kind]()
        local method = r.method or ((coins >> 42) & 127 == 0 and "HEAD" or "GET")
        if r.kind == "dav" and unit() < 0.5 then method = unit() < 0.5 and "OPTIONS" or "GET" end
        local status, size = status_size(r, c, method)
        if method == "HEAD" then size = 0 end
        local ts = stamp(sec, site[4], site[5])
        local line
        if fmt == "combined" then
            line = ip .. " - " .. c.auth .. " [" .. ts .. "] \"" .. method .. " " .. target(r, c)
                .. " " .. draw_proto() .. "\" " .. status .. " " .. size .. " \""
                .. referer(r, site) .. "\" \"" .. ua .. "\""
        else
            local s = c.session
            if c.user == "-" and (c.bot or unit() < 0.5) then
                s = "-"
            elseif s == nil or unit() < 0.02 then
                s = random_string(int, ALNUM, 15)
                c.session = s
            end
            line = ip .. " " .. s .. " " .. c.user .. " [" .. ts .. "] \"" .. method .. " "
                .. site[2] .. "://" .. site[1] .. ":" .. site[3] .. target(r, c) .. " "
                .. draw_proto() .. "\" " .. status .. " " .. size .. " -"
        end
        if coins & 0xFFFFF < malformed then line = broken(line, ip, ts) end
        return line
    end
end

-- ---------------------------------------------------------------- main

local function run(o)
    local out = io.stdout
    if o.output then
        local f, err = io.open(o.output, "wb")
        if not f then
            io.stderr:write("genlog: ", err, "\n")
            return 1
        end
        out = f
    end
    local gen = new_generator(o)
    local buf, n = {}, 0
    local CHUNK = 2048
    for _ = 1, o.lines do
        n = n + 1
        buf[n] = gen()
        if n == CHUNK then
            buf[n + 1] = ""
            out:write(concat(buf, "\n", 1, n + 1))
            n = 0
        end
    end
    if n > 0 then
        buf[n + 1] = ""
        out:write(concat(buf, "\n", 1, n + 1))
    end
    local ok, err = out:flush()
    if o.output then
        local ok2, err2 = out:close()
        ok, err = ok and ok2, err or err2
    end
    if not ok then
        io.stderr:write("genlog: write failed: ", tostring(err), "\n")
        return 1
    end
    return 0
end

local function main(args)
    local ok, o = pcall(parse_args, args)
    if not ok then
        if type(o) == "table" and o.usage then
            io.stderr:write("genlog: ", o.usage, " (try --help)\n")
            return 2
        end
        error(o, 0)
    end
    if o.help then
        io.stdout:write(USAGE)
        return 0
    end
    return run(o)
end

os.exit(main({ ... }))
