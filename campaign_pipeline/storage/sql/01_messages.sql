-- messages: one row per recipient message of either channel (key: app_id, campaign_id, recipient);
-- the columns both channels share, plus channel ('SMS' | 'WhatsApp').
CREATE OR REPLACE VIEW messages AS
SELECT 'SMS' AS channel, app_id, campaign_id, recipient, partition_date, sent_at, sender_phone,
       status, last_updated_at
FROM sms_messages
UNION ALL
SELECT 'WhatsApp' AS channel, app_id, campaign_id, recipient, partition_date, sent_at, sender_phone,
       status, last_updated_at
FROM whatsapp_messages;
