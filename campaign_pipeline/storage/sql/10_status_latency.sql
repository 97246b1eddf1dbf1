-- status_latency: one row per channel and current status, over every loaded message: the time from
-- sent_at to last_updated_at in seconds, as continuous (linearly interpolated) percentiles.
CREATE OR REPLACE VIEW status_latency AS
WITH latency AS (
    SELECT channel, status, (epoch_us(last_updated_at) - epoch_us(sent_at)) / 1e6 AS seconds
    FROM message_metrics
)
SELECT channel,
       status,
       count(*) AS messages,
       quantile_cont(seconds, 0.5) AS p50_seconds,
       quantile_cont(seconds, 0.9) AS p90_seconds,
       quantile_cont(seconds, 0.99) AS p99_seconds,
       max(seconds) AS max_seconds
FROM latency
GROUP BY channel, status;
