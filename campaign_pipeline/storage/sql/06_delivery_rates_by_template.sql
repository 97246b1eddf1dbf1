-- delivery_rates_by_template: one row per partition_date and WhatsApp template (subject, with its
-- sender_source_name); WhatsApp only, so there is no undelivered count.
CREATE OR REPLACE VIEW delivery_rates_by_template AS
WITH counts AS (
    SELECT partition_date,
           subject,
           sender_source_name,
           count(*) AS messages,
           sum(is_delivered)::BIGINT AS delivered,
           sum(is_read)::BIGINT AS "read",
           sum(is_failed)::BIGINT AS failed,
           sum(is_in_flight)::BIGINT AS in_flight
    FROM message_metrics
    WHERE channel = 'WhatsApp'
    GROUP BY partition_date, subject, sender_source_name
)
SELECT *,
       delivery_rate(delivered, messages, in_flight) AS delivery_rate,
       failure_rate(failed, 0, messages, in_flight) AS failure_rate,
       read_rate("read", delivered) AS read_rate
FROM counts;
