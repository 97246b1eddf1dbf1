-- campaign_delivery: one row per campaign and app (every row of campaigns): the summary endpoint's totals
-- (summary_*) beside the same counts rebuilt from the detail rows, with the rates and the
-- differences a reconciliation needs. A campaign without detail rows has messages = 0 and NULL rates.
CREATE OR REPLACE VIEW campaign_delivery AS
WITH detail AS (
    SELECT app_id, campaign_id,
           count(*) AS messages,
           sum(is_delivered)::BIGINT AS delivered,
           sum(is_read)::BIGINT AS "read",
           sum(is_pending)::BIGINT AS pending,
           sum(is_failed)::BIGINT AS failed,
           sum(is_undelivered)::BIGINT AS undelivered,
           sum(is_in_flight)::BIGINT AS in_flight
    FROM message_metrics
    GROUP BY app_id, campaign_id
),
joined AS (
    SELECT c.app_id, c.campaign_id, c.partition_date, c.sent_at, c.channel, c.campaign_name, c.created_by,
           c.sender_phone, c.sender_eid, c.sender_channel_name, c.subject,
           c.total_recipients,
           c.delivered AS summary_delivered,
           c."read" AS summary_read,
           c.pending AS summary_pending,
           c.failed AS summary_failed,
           c.replied AS summary_replied,
           coalesce(d.messages, 0) AS messages,
           coalesce(d.delivered, 0) AS delivered,
           CASE WHEN c.channel = 'WhatsApp' THEN coalesce(d."read", 0) END AS "read",
           coalesce(d.pending, 0) AS pending,
           coalesce(d.failed, 0) AS failed,
           coalesce(d.undelivered, 0) AS undelivered,
           coalesce(d.in_flight, 0) AS in_flight
    FROM campaigns c
    LEFT JOIN detail d USING (app_id, campaign_id)
)
SELECT *,
       delivery_rate(delivered, messages, in_flight) AS delivery_rate,
       failure_rate(failed, undelivered, messages, in_flight) AS failure_rate,
       read_rate("read", delivered) AS read_rate,
       messages - total_recipients AS recipients_diff,
       delivered - summary_delivered AS delivered_diff
FROM joined;
