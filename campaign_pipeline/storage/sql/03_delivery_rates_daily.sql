-- delivery_rates_daily: one row per partition_date and channel; counts are sums of the
-- message_metrics flags, rates come from the rate macros (in-flight excluded, NULL when the
-- denominator is 0; read and read_rate are NULL for SMS).
CREATE OR REPLACE VIEW delivery_rates_daily AS
WITH counts AS (
    SELECT partition_date,
           channel,
           count(*) AS messages,
           sum(is_delivered)::BIGINT AS delivered,
           sum(is_read)::BIGINT AS "read",
           sum(is_failed)::BIGINT AS failed,
           sum(is_undelivered)::BIGINT AS undelivered,
           sum(is_in_flight)::BIGINT AS in_flight
    FROM message_metrics
    GROUP BY partition_date, channel
)
SELECT *,
       delivery_rate(delivered, messages, in_flight) AS delivery_rate,
       failure_rate(failed, undelivered, messages, in_flight) AS failure_rate,
       read_rate("read", delivered) AS read_rate
FROM counts;
