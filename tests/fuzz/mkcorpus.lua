-- mkcorpus.lua: writes the seed corpora of the fuzz harnesses, tests/fuzz/corpus/HARNESS/, from
-- the lines of tests/cases/*.log, the hostile corpus (tests/lib/hostile.lua) and the formats
-- the harnesses use. Each seed is one small file named by the SHA-256 of its bytes (first 16
-- hex digits); lines longer than 12 KiB are cut. Rerun after changing the cases:
--     ./lproc tests/fuzz/mkcorpus.lua
local ROOT = os.getenv("LPROC_ROOT") or "."
package.path = ROOT .. "/tests/lib/?.lua;" .. ROOT .. "/scripts/lib/?.lua;" .. package.path
local sha256 = require "lproc.sha256"
local sys = require "lproc.sys"
local hostile = require "hostile"
local rules = require "lproc.rules"
local H = dofile(ROOT .. "/tests/fuzz/harness.lua").init(ROOT)

local MAX = 12288
local seeds = { clean = {}, url = {}, format = {} }

local function add(kind, s)
    if #s > MAX then s = s:sub(1, MAX) end
    seeds[kind][s] = true
end

-- Lines of the cases and the hostile corpus.
local lines = {}
for _, name in ipairs(sys.listdir(ROOT .. "/tests/cases")) do
    if name:match("%.log$") then
        local f = assert(io.open(ROOT .. "/tests/cases/" .. name, "rb"))
        for line in f:read("a"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
        f:close()
    end
end
for _, c in ipairs(hostile.lines) do lines[#lines + 1] = c[2] end
for _, c in ipairs(hostile.files) do lines[#lines + 1] = c[2] end

-- Lines in the custom rules' own formats (tests/fuzz/harness.lua), one per mapping branch.
local WIDE = [[203.0.113.9:51234 ABCDEFGHIJKLMNO bob@example.org [2022-11-01T10:00:00+01:00] 1667293200.123 ]]
    .. [["GET /shop/cart?sid=abc&x=1 HTTP/2.0" 200 5120 420 0.031 2.50 "https://ref.example/" ]]
    .. [["Mozilla/5.0 (X11; Linux x86_64) Firefox/118.0 fuzzer/1" Shop.Example.COM/shop/shop.example.com:8443 ]]
    .. [[10.0.0.1:443 c=17/3 pid=4242 p {HIT|12.345|2022-11-01|1|2022-11-01 10:00:00|10:00:00|0.75|abcd|99} ]]
    .. [[req-42;]]
for b = 0, 15 do lines[#lines + 1] = WIDE .. string.char(48 + b) end
-- ... and with values at their edges
for _, r in ipairs({
    { "0.031 2.50", "1234567890.5 -" },                   -- $request_time out of range, $gzip_ratio -
    { "0.031 2.50", "- -" },
    { "|99}", "|-99}" },                                  -- negative into BIGINT UNSIGNED
    { "|99}", "|9999999999999999999}" },
    { "200 5120 420", "200 99999999999999999999 420" },   -- $bytes_sent out of range
    { "|12.345|", "|-0.0005|" },                          -- a negative DECIMAL rounding to zero
    { "|12.345|", "|-12.3456|" },
    { "|0.75|", "|1e308|" }, { "|0.75|", "|0x1p4|" }, { "|0.75|", "|nan|" },
    { "|1|", "|true|" }, { "|1|", "|2|" },
    { "2022-11-01T10:00:00+01:00", "2022-13-01T10:00:00+01:00" },
    { "2022-11-01T10:00:00+01:00", "0999-12-31T23:00:00-01:00" },
    { "1667293200.123", "99999999999999.9" },
    { "|2022-11-01 10:00:00|", "|2022-02-29 10:00:00|" }, { "|10:00:00|", "|24:00:00|" },
    { "203.0.113.9:51234", "-42:51234" },
}) do
    lines[#lines + 1] = WIDE:gsub(r[1]:gsub("%p", "%%%0"), (r[2]:gsub("%%", "%%%%"))) .. "8"
end
lines[#lines + 1] = [[198.51.100.2 10.0.0.9:8080502 <01/Nov/2022:00:00:00 -0500> GET / HTTP/1.1]]
lines[#lines + 1] = [[1667293200.5 198.51.100.3 "POST /api?session=Z HTTP/1.1" 201 12 curl/8.4.0]]

for _, line in ipairs(lines) do
    add("clean", line)
    local target = line:match('"%u+ (.-) HTTP/[%d.]+"')
    if target then add("url", target) end
end
for _, t in ipairs({
    "/", "*", "/a/b;jsessionid=ABC123/c?x=1#frag", "/p?phpsessid=Q&sid=1;session=2",
    "http://user:pw@[2001:db8::1]:8080/p?q=1", "HTTPS://Example.COM:443/Path?Q", "example.com:443",
    "[::1]:99999", "ftp+x.y-z://h/", "http://a@b@c:80", "http://[::1/x", "http://h:/p", "//host/p",
    "http://%41.example/%2e%2e/", "/caf\195\169/\255\254?\0", "http://h:65535", "http://h:65536",
}) do
    add("url", t)
end

local formats = { H.WIDE, H.LOOSE, H.MSEC, rules.presets.combined, rules.presets.common,
    rules.presets.proxy,
    [[$remote_addr - $remote_user [$time_iso8601] "$request_method $request_uri $server_protocol" ]]
        .. [[$status $bytes_sent $request_time "$http_referer" "$http_user_agent" $host $upstream_cache_status]],
    "${a}${b}${c}", "$a$b", "\"$x\"\t$y\0$z", "[$time_local]", "$status$status", "${bad name}", "${",
    "$", "$$", "x$1y",
}
for i, fmt in ipairs(formats) do
    add("format", fmt)
    add("format", fmt .. "\n" .. lines[(i * 7) % #lines + 1])
end
add("format", rules.presets.combined .. "\n" .. lines[1])
add("format", H.WIDE .. "\n" .. WIDE .. "4")

for kind, set in pairs(seeds) do
    local dir = ROOT .. "/tests/fuzz/corpus/" .. kind
    os.execute("mkdir -p '" .. dir .. "'")
    local n = 0
    for s in pairs(set) do
        local f = assert(io.open(dir .. "/" .. sha256.hex(s):sub(1, 16), "wb"))
        f:write(s)
        f:close()
        n = n + 1
    end
    print(string.format("%s: %d seeds", kind, n))
end
