-- lproc.config: settings from the environment, with a .env file in the working directory read
-- when present (real environment variables win).
--
--   LPROC_AMQP_URL   amqp://user:pass@host:port/vhost   (amqps:// for TLS)
--   LPROC_MYSQL_URL  mysql://user:pass@host:port/db     (?ssl-mode=REQUIRED&ssl-ca=... for TLS)
--   LPROC_GEOIP_DB   one or more .mmdb files, separated by ":" or ","
-- The original project's names are accepted when the URLs are not set: RABBIT_USER,
-- RABBIT_PASSWORD, RABBIT_HOST, RABBIT_PORT, RABBIT_VHOST; MYSQL_USER, MYSQL_PASSWORD,
-- MYSQL_DATABASE, HOST and PORT (MySQL's host and port).
local sys = require "lproc.sys"

local M = {}

-- The repository (or installation) root: three levels above this file (scripts/lib/lproc/).
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
M.root = here .. "/../../.."

-- Parses the text of a .env file into a table. Lines: KEY=VALUE, optional "export ", "#"
-- comments, values optionally in single or double quotes.
function M.parse_env(text)
    local t = {}
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        line = line:gsub("\r$", "")
        local k, v = line:match("^%s*export%s+([%w_]+)%s*=%s*(.-)%s*$")
        if not k then k, v = line:match("^%s*([%w_]+)%s*=%s*(.-)%s*$") end
        if k then
            local q = v:sub(1, 1)
            if (q == '"' or q == "'") and v:sub(-1) == q and #v >= 2 then
                v = v:sub(2, -2)
                if q == '"' then v = v:gsub("\\([\"\\n])", { ['"'] = '"', ["\\"] = "\\", n = "\n" }) end
            else
                v = v:gsub("%s+#.*$", "")
            end
            t[k] = v
        end
    end
    return t
end

local dotenv
-- Reads ./.env once; warns when other users can read it (it holds passwords).
local function load_dotenv(warn)
    if dotenv then return dotenv end
    dotenv = {}
    local f = io.open(".env", "rb")
    if f then
        dotenv = M.parse_env(f:read("a") or "")
        f:close()
        local st = sys.stat(".env")
        if st and st.mode & 4 ~= 0 and warn then
            warn("warning: .env is readable by other users; run: chmod 600 .env")
        end
    end
    return dotenv
end

-- M.get(name) -> the value from the environment, else from .env, else nil ("" counts as unset).
function M.get(name)
    local v = os.getenv(name)
    if v == nil or v == "" then v = load_dotenv()[name] end
    if v == "" then v = nil end
    return v
end

local function pct(s)
    return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- M.amqp_url() -> url | nil, what is missing
function M.amqp_url()
    local url = M.get("LPROC_AMQP_URL")
    if url then return url end
    local user = M.get("RABBIT_USER")
    if not user then
        return nil, "no broker configured: set LPROC_AMQP_URL (or RABBIT_USER and RABBIT_PASSWORD) in the environment or .env"
    end
    local vhost = M.get("RABBIT_VHOST") or "/"
    return string.format("amqp://%s:%s@%s:%s/%s", pct(user), pct(M.get("RABBIT_PASSWORD") or ""),
        M.get("RABBIT_HOST") or "localhost", M.get("RABBIT_PORT") or "5672", pct(vhost))
end

-- M.amqp_tls() -> the TLS options for an amqps:// URL: LPROC_AMQP_CACERT (default: the
-- system's CA bundle), LPROC_AMQP_CERT and LPROC_AMQP_KEY (a client certificate), and
-- LPROC_AMQP_VERIFY=0 to skip verifying the broker's certificate (not recommended).
function M.amqp_tls()
    local ca = M.get("LPROC_AMQP_CACERT")
    if not ca and sys.stat("/etc/ssl/certs/ca-certificates.crt") then
        ca = "/etc/ssl/certs/ca-certificates.crt"
    end
    return { cacert = ca, cert = M.get("LPROC_AMQP_CERT"), key = M.get("LPROC_AMQP_KEY"),
             verify = M.get("LPROC_AMQP_VERIFY") ~= "0" }
end

-- M.mysql_url() -> url | nil, what is missing
function M.mysql_url()
    local url = M.get("LPROC_MYSQL_URL")
    if url then return url end
    local user, db = M.get("MYSQL_USER"), M.get("MYSQL_DATABASE")
    if not user or not db then
        return nil, "no database configured: set LPROC_MYSQL_URL (or MYSQL_USER, MYSQL_PASSWORD and MYSQL_DATABASE) in the environment or .env"
    end
    return string.format("mysql://%s:%s@%s:%s/%s", pct(user), pct(M.get("MYSQL_PASSWORD") or ""),
        M.get("HOST") or "127.0.0.1", M.get("PORT") or "3306", pct(db))
end

-- M.geoip_paths() -> array of .mmdb paths: LPROC_GEOIP_DB, else the built-in country database
-- (when it exists), else {}.
function M.geoip_paths()
    local v = M.get("LPROC_GEOIP_DB")
    local t = {}
    if v then
        for p in v:gmatch("[^:,]+") do t[#t + 1] = p end
        return t
    end
    local builtin = M.root .. "/build/country.mmdb"
    if sys.stat(builtin) then t[1] = builtin end
    return t
end

-- M.redact(url) -> url without its password.
function M.redact(url)
    return (tostring(url):gsub("^(%a[%w+.-]*://[^:/@]*):[^@/]*@", "%1:***@"))
end

-- M.check_dotenv(warn): reads .env now, so that a warning about its mode is given at start-up.
function M.check_dotenv(warn)
    load_dotenv(warn)
end

return M
