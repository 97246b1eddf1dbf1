-- delivery_rates_daily: one row per partition_date and channel, with the metric definitions of
-- docs/data-dictionary.md. Rates exclude in-flight messages from the denominator and are NULL
-- where the denominator is 0.
CREATE OR REPLACE VIEW delivery_rates_daily AS
WITH counts AS (
    SELECT partition_date,
           channel,
           count(*) AS messages,
           count(*) FILTER (WHERE status = 'Delivered' OR (channel = 'WhatsApp' AND status = 'Read')) AS delivered,
           count(*) FILTER (WHERE channel = 'WhatsApp' AND status = 'Read') AS "read",
           count(*) FILTER (WHERE status = 'Failed') AS failed,
           count(*) FILTER (WHERE channel = 'SMS' AND status = 'Undelivered') AS undelivered,
           count(*) FILTER (WHERE status = 'Pending' OR (channel = 'SMS' AND status = 'Submitted')) AS in_flight
    FROM messages
    GROUP BY partition_date, channel
)
SELECT partition_date, channel, messages, delivered, "read", failed, undelivered, in_flight,
       delivered / nullif(messages - in_flight, 0) AS delivery_rate,
       (failed + undelivered) / nullif(messages - in_flight, 0) AS failure_rate,
       CASE WHEN channel = 'WhatsApp' THEN "read" / nullif(delivered, 0) END AS read_rate
FROM counts;
