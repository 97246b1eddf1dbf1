-- failure_reasons: one row per partition_date, channel, status and reason of the messages that did
-- not arrive (failed, or SMS undelivered), with the count. WhatsApp: failed_reason split into
-- error_code and error_text ("Error Code: 7061120 - 360Dialog bad request", dash optional);
-- SMS: the carrier_network_status (NULL when the carrier never received the message).
CREATE OR REPLACE VIEW failure_reasons AS
WITH failures AS (
    SELECT partition_date, channel, status, failed_reason, carrier_network_status,
           regexp_extract(failed_reason, '^\s*Error Code:\s*(\d+)\s*(?:-\s*)?(.*?)\s*$',
                          ['code', 'text']) AS parsed
    FROM message_metrics
    WHERE is_failed = 1 OR is_undelivered = 1
)
SELECT partition_date,
       channel,
       status,
       nullif(parsed.code, '') AS error_code,
       -- A reason that does not follow the "Error Code: N - text" pattern is kept whole as text.
       CASE WHEN parsed.code <> '' THEN nullif(parsed.text, '') ELSE nullif(trim(failed_reason), '') END
           AS error_text,
       carrier_network_status,
       count(*) AS messages
FROM failures
GROUP BY ALL;
