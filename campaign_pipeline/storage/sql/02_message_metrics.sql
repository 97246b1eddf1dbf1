-- message_metrics: one row per recipient message of either channel (key: channel, campaign_id,
-- recipient), every column of both channels (NULL where the channel has no such field) plus one
-- 0/1 flag per metric. THE metric definitions of docs/data-dictionary.md live here and only here:
-- every rate view sums these flags and computes its rates with the macros below.
CREATE OR REPLACE VIEW message_metrics AS
WITH both_channels AS (
    SELECT 'SMS' AS channel, app_id, campaign_id, recipient, partition_date, sent_at, last_updated_at, status,
           sender_phone, sender_eid, NULL::VARCHAR AS sender_channel_name,
           NULL::VARCHAR AS sender_source_name, NULL::VARCHAR AS subject, recipient_country, num_sms,
           carrier_network_status, NULL::VARCHAR AS failed_reason
    FROM sms_messages
    UNION ALL
    SELECT 'WhatsApp' AS channel, app_id, campaign_id, recipient, partition_date, sent_at, last_updated_at, status,
           sender_phone, NULL::VARCHAR AS sender_eid, sender_channel_name, sender_source_name, subject,
           NULL::VARCHAR AS recipient_country, NULL::INTEGER AS num_sms,
           NULL::VARCHAR AS carrier_network_status, failed_reason
    FROM whatsapp_messages
)
SELECT *,
       -- Read implies delivered on WhatsApp.
       CASE WHEN status = 'Delivered' OR (channel = 'WhatsApp' AND status = 'Read') THEN 1 ELSE 0 END
           AS is_delivered,
       -- SMS has no read receipts: NULL (not applicable) rather than 0.
       CASE WHEN channel = 'WhatsApp' THEN CASE WHEN status = 'Read' THEN 1 ELSE 0 END END AS is_read,
       CASE WHEN status = 'Failed' THEN 1 ELSE 0 END AS is_failed,
       CASE WHEN channel = 'SMS' AND status = 'Undelivered' THEN 1 ELSE 0 END AS is_undelivered,
       CASE WHEN status = 'Pending' THEN 1 ELSE 0 END AS is_pending,
       -- Not settled yet: excluded from the rates' denominators.
       CASE WHEN status = 'Pending' OR (channel = 'SMS' AND status = 'Submitted') THEN 1 ELSE 0 END
           AS is_in_flight
FROM both_channels;

-- The rates, over counts that are sums of the flags above. NULL where the denominator is 0.
CREATE OR REPLACE MACRO delivery_rate(delivered, messages, in_flight) AS
    delivered / nullif(messages - in_flight, 0);
CREATE OR REPLACE MACRO failure_rate(failed, undelivered, messages, in_flight) AS
    (failed + undelivered) / nullif(messages - in_flight, 0);
CREATE OR REPLACE MACRO read_rate("read", delivered) AS
    "read" / nullif(delivered, 0);
