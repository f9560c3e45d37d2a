-- clean.lua: the cleaning rules. One access-log line becomes one row of clean_log, or a row of
-- clean_log_reject with the reason. Edit this file to teach the pipeline a site's formats and
-- fields; check a change in seconds with
--     lproc scripts/clean.lua --dry-run access.log | less
-- (See scripts/lib/lproc/rules.lua for everything a rule can say.)
local rules = require "lproc.rules"

local R = rules.new{
    -- GeoIP databases, tried in order (default: $LPROC_GEOIP_DB, else the built-in country db):
    -- geoip = { "/var/lib/GeoIP/GeoLite2-City.mmdb" },
    max_line = 64 * 1024,           -- longer lines are rejects ("line too long")
}

-- 1. Formats, in nginx log_format syntax, tried in this order. A line matching none is a reject.
R:format "combined"     -- nginx: $remote_addr - $remote_user [$time_local] "$request" $status
                        --        $body_bytes_sent "$http_referer" "$http_user_agent"
R:format "proxy"        -- the proxy: $remote_addr $proxy_session $remote_user [$time_local]
                        --        "$request" $status $body_bytes_sent -

-- A site format with a custom field: declare the format, then a column for the field. A column
-- named like a variable is filled from it; otherwise set it in R.map below.
-- R:format("cached", [[$remote_addr - $remote_user [$time_local] "$request" $status ]]
--     .. [[$body_bytes_sent "$http_referer" "$http_user_agent" $upstream_cache_status]])
-- R:column("cache_status", "VARCHAR(16)")

-- 2. User agents -> browser, os, device: ordered {pattern, name} lists; the first match wins.
-- table.insert(R.user_agents.browser, 1, {"MyCompanyApp/", "MyCompanyApp"})

-- 3. The mapping, once per line, after every standard column has been computed:
--    rec.<column> / rec.<variable> to read, rec.<column> = value to write,
--    return false, "reason" to make the line a reject.
function R.map(rec)
    -- rec.cache_status = rec.upstream_cache_status
    -- if rec.path == "/healthz" then return false, "load-balancer health check" end
end

return require("lproc.clean").main(R, arg)
