-- delivery_rates_by_country: one row per partition_date and SMS recipient_country (NULL when the
-- API gave none); SMS only, so there is no read count. Counts sum the message_metrics flags.
CREATE OR REPLACE VIEW delivery_rates_by_country AS
WITH counts AS (
    SELECT partition_date,
           recipient_country,
           count(*) AS messages,
           sum(is_delivered)::BIGINT AS delivered,
           sum(is_failed)::BIGINT AS failed,
           sum(is_undelivered)::BIGINT AS undelivered,
           sum(is_in_flight)::BIGINT AS in_flight
    FROM message_metrics
    WHERE channel = 'SMS'
    GROUP BY partition_date, recipient_country
)
SELECT *,
       delivery_rate(delivered, messages, in_flight) AS delivery_rate,
       failure_rate(failed, undelivered, messages, in_flight) AS failure_rate
FROM counts;
