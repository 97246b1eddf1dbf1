-- sms_segments_daily: one row per partition_date and SMS recipient_country: messages and billable
-- segments (sum of num_sms over every SMS row, whatever its status).
CREATE OR REPLACE VIEW sms_segments_daily AS
SELECT partition_date,
       recipient_country,
       count(*) AS messages,
       sum(num_sms)::BIGINT AS segments,
       count(*) FILTER (WHERE num_sms > 1) AS multipart_messages
FROM message_metrics
WHERE channel = 'SMS'
GROUP BY partition_date, recipient_country;
