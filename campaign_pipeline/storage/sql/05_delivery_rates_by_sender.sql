-- delivery_rates_by_sender: one row per partition_date, channel and sender (sender_phone plus
-- sender_eid for SMS, sender_channel_name for WhatsApp; the other channel's column is NULL).
CREATE OR REPLACE VIEW delivery_rates_by_sender AS
WITH counts AS (
    SELECT partition_date,
           channel,
           sender_phone,
           sender_eid,
           sender_channel_name,
           count(*) AS messages,
           sum(is_delivered)::BIGINT AS delivered,
           sum(is_read)::BIGINT AS "read",
           sum(is_failed)::BIGINT AS failed,
           sum(is_undelivered)::BIGINT AS undelivered,
           sum(is_in_flight)::BIGINT AS in_flight
    FROM message_metrics
    GROUP BY partition_date, channel, sender_phone, sender_eid, sender_channel_name
)
SELECT *,
       delivery_rate(delivered, messages, in_flight) AS delivery_rate,
       failure_rate(failed, undelivered, messages, in_flight) AS failure_rate,
       read_rate("read", delivered) AS read_rate
FROM counts;
