-- hostile.lua: a corpus of hostile and broken log lines. Every byte of a log line is written
-- by a stranger (URL, user, user agent, referrer); each entry is {name, line}. Lines never
-- contain "\n" (that is what ends a line); the file-level cases (CR-only, CRLF, no final
-- newline, empty lines) are in M.files.
local M = {}

local GOOD = '198.51.100.7 - alice [01/Nov/2022:10:00:00 +0100] "GET /index.html HTTP/1.1" 200 512 "-" "curl/8.0"'
local function combined(ip, user, time, req, status, size, ref, ua)
    return string.format('%s - %s [%s] "%s" %s %s "%s" "%s"', ip, user, time, req, status, size, ref, ua)
end
local T0 = "01/Nov/2022:10:00:00 +0100"
local INJ = "'; DROP TABLE raw_log; --"

-- A TLS ClientHello as nginx logs it in the request field of a 400 (hex-escaped), and raw.
local HELLO_ESCAPED = "\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xFC\\x03\\x03"
local HELLO_RAW = "\22\3\1\2\0\1\0\1\252\3\3" .. string.rep("\0\255", 8)

M.lines = {
    { "a good line", GOOD },
    { "binary junk", "\1\2\3\4\5\6\7\8\9\11\12\14\15\16\127\128\129\254\255" },
    { "NUL bytes in a good line", GOOD:gsub("alice", "al\0ice") },
    { "NUL bytes only", "\0\0\0\0" },
    { "invalid UTF-8 in the user agent", combined("198.51.100.7", "-", T0, "GET / HTTP/1.1", 200, 1, "-", "Mozilla \255\254 \192\175") },
    { "overlong UTF-8 slash in the path", combined("198.51.100.7", "-", T0, "GET /\192\175etc/passwd HTTP/1.1", 404, 0, "-", "x") },
    { "UTF-8 surrogate encoded", combined("198.51.100.7", "-", T0, "GET /\237\160\128 HTTP/1.1", 404, 0, "-", "x") },
    { "valid multi-byte UTF-8", combined("198.51.100.7", "józef", T0, "GET /café/日本 HTTP/1.1", 200, 10, "-", "Mozilla/5.0 ☃") },
    { "a lone CR inside", GOOD:gsub("GET", "G\rET") },
    { "unbalanced quote", '198.51.100.7 - - [' .. T0 .. '] "GET / HTTP/1.1 200 5 "-" "x"' },
    { "unbalanced bracket", '198.51.100.7 - - [' .. T0 .. ' "GET / HTTP/1.1" 200 5 "-" "x"' },
    { "escaped quotes in the user agent", combined("198.51.100.7", "-", T0, "GET / HTTP/1.1", 200, 5, "-", 'Mozilla \\"quoted\\" \\x22hex\\x22') },
    { "escaped quote in the request", combined("198.51.100.7", "-", T0, 'GET /a\\"b HTTP/1.1', 200, 5, "-", "x") },
    { "TLS ClientHello as nginx logs it", combined("198.51.100.7", "-", T0, HELLO_ESCAPED, 400, 157, "-", "-") },
    { "raw TLS ClientHello bytes", HELLO_RAW },
    { "raw TLS bytes in the request field", combined("198.51.100.7", "-", T0, HELLO_RAW, 400, 0, "-", "-") },
    { "SQL injection in the user", combined("198.51.100.7", INJ, T0, "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "SQL injection in the user, without spaces", combined("198.51.100.7", "admin'--\\';DROP/**/TABLE/**/raw_log;#", T0, "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "SQL injection in the path", combined("198.51.100.7", "-", T0, "GET /" .. INJ .. " HTTP/1.1", 200, 5, "-", "x") },
    { "SQL injection in the query", combined("198.51.100.7", "-", T0, "GET /s?q=1' OR '1'='1 HTTP/1.1", 200, 5, "-", "x") },
    { "SQL injection in the referrer", combined("198.51.100.7", "-", T0, "GET / HTTP/1.1", 200, 5, INJ, "x") },
    { "SQL injection in the user agent", combined("198.51.100.7", "-", T0, "GET / HTTP/1.1", 200, 5, "-", INJ .. " \\'; SELECT SLEEP(10); #") },
    { "backslashes and \\0 everywhere", combined("198.51.100.7", "a\\b", T0, "GET /\\0\\\\x HTTP/1.1", 200, 5, "\\", "\\0\\'\\\"\\\\") },
    { "SQL injection as the whole line", INJ },
    { "shell metacharacters", combined("198.51.100.7", "$(reboot)", T0, "GET /`id`;ls|cat&&rm -rf / HTTP/1.1", 200, 5, "-", "${IFS}$HOME") },
    { "format string specifiers", combined("198.51.100.7", "%s%n%x", T0, "GET /%s%s%s%n%p HTTP/1.1", 200, 5, "%n", "%s%s%s%s%n%99999999d") },
    { "ANSI escape sequences", combined("198.51.100.7", "\27[31mred", T0, "GET /\27]0;pwned\7 HTTP/1.1", 200, 5, "-", "\27[2J\27[H clear") },
    { "status 99999", combined("198.51.100.7", "-", T0, "GET / HTTP/1.1", 99999, 5, "-", "x") },
    { "status 000", combined("198.51.100.7", "-", T0, "GET / HTTP/1.1", "000", 5, "-", "x") },
    { "size 2^64", combined("198.51.100.7", "-", T0, "GET / HTTP/1.1", 200, "18446744073709551616", "-", "x") },
    { "size 2^63", combined("198.51.100.7", "-", T0, "GET / HTTP/1.1", 200, "9223372036854775808", "-", "x") },
    { "size with a hundred digits", combined("198.51.100.7", "-", T0, "GET / HTTP/1.1", 200, string.rep("9", 100), "-", "x") },
    { "negative size", combined("198.51.100.7", "-", T0, "GET / HTTP/1.1", 200, "-5", "-", "x") },
    { "month 13", combined("198.51.100.7", "-", "01/Foo/2022:10:00:00 +0100", "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "February 30", combined("198.51.100.7", "-", "30/Feb/2022:10:00:00 +0100", "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "hour 25", combined("198.51.100.7", "-", "01/Nov/2022:25:00:00 +0100", "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "year 0000", combined("198.51.100.7", "-", "01/Nov/0000:10:00:00 +0000", "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "year 9999 at the last second", combined("198.51.100.7", "-", "31/Dec/9999:23:59:59 -1400", "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "offset +9999", combined("198.51.100.7", "-", "01/Nov/2022:10:00:00 +9999", "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "an IP that is not an IP", combined("999.999.999.999", "-", T0, "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "a host name as the IP", combined("example.com", "-", T0, "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "IPv6 client", combined("2001:db8::1", "-", T0, "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "IPv6 garbage", combined("2001:db8:::::1", "-", T0, "GET / HTTP/1.1", 200, 5, "-", "x") },
    { "dash request", combined("198.51.100.7", "-", T0, "-", 400, 0, "-", "-") },
    { "empty request", combined("198.51.100.7", "-", T0, "", 400, 0, "-", "-") },
    { "URL of 5000 bytes", combined("198.51.100.7", "-", T0, "GET /" .. string.rep("a", 5000) .. " HTTP/1.1", 414, 0, "-", "x") },
    { "user agent of 20000 bytes", combined("198.51.100.7", "-", T0, "GET / HTTP/1.1", 200, 5, "-", string.rep("Mozilla ", 2500)) },
    { "a 1 MB line", GOOD .. " " .. string.rep("x", 1024 * 1024) },
    { "a line over the rules' maximum (70000 bytes of junk)", string.rep("\255junk ", 12000) },
    { "only spaces", "          " },
    { "only a tab", "\t" },
    { "proxy line with an injected e-mail", '198.51.100.7 ABCDEFGHIJKLMNO ' .. INJ .. '@evil.example [01/Nov/2022:00:00:00 -0500] "GET https://host:443/p HTTP/1.1" 200 7259 -' },
    { "proxy line with a session id of 3 chars", '198.51.100.7 ABC bob [01/Nov/2022:00:00:00 -0500] "GET https://host:443/p HTTP/1.1" 200 7259 -' },
    { "absolute URL with an IPv6 literal and credentials", combined("198.51.100.7", "-", T0, "GET http://user:pw@[::1]:8080/p?sid=1 HTTP/1.1", 200, 5, "-", "x") },
    { "URL with a port out of range", combined("198.51.100.7", "-", T0, "GET http://h:99999/p HTTP/1.1", 200, 5, "-", "x") },
    { "CONNECT authority form", combined("198.51.100.7", "-", T0, "CONNECT example.com:443 HTTP/1.1", 200, 0, "-", "x") },
}

-- File-level cases: exact file bytes and the lines the producer must read from them.
M.files = {
    { "CRLF endings", "a\r\nb\r\n", { "a", "b" } },
    { "CR-only endings (one line with CRs inside)", "a\rb\rc\r", { "a\rb\rc\r" } },
    { "no final newline", "a\nb", { "a", "b" } },
    { "empty lines", "\n\na\n\n", { "", "", "a", "" } },
}

-- M.write(path) -> the number of lines written: every corpus line, then the file-level cases
-- concatenated (each ends with "\n" so they stay separate lines).
function M.write(path)
    local f = assert(io.open(path, "wb"))
    local n = 0
    for _, c in ipairs(M.lines) do
        f:write(c[2], "\n")
        n = n + 1
    end
    f:close()
    return n
end

return M
