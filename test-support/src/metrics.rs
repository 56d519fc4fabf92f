//! Reading a histogram back from Prometheus text, for benchmarks that print where the
//! time of a path goes.

/// A histogram summed over the series whose labels contain `label` (every series when
/// empty): how many observations, their sum, and the upper bound of the bucket that holds
/// the 99th percentile.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub count: u64,
    pub sum: f64,
    pub p99_bound: f64,
}

impl Summary {
    pub fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }
}

/// `name`'s histogram in `text` (Prometheus text exposition).
pub fn histogram(text: &str, name: &str, label: &str) -> Summary {
    let (count_name, sum_name, bucket_name) = (
        format!("{name}_count"),
        format!("{name}_sum"),
        format!("{name}_bucket"),
    );
    let mut summary = Summary::default();
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if !series.contains(label) {
            continue;
        }
        if series.starts_with(&count_name) {
            summary.count += value.parse::<u64>().unwrap_or(0);
        } else if series.starts_with(&sum_name) {
            summary.sum += value.parse::<f64>().unwrap_or(0.0);
        } else if series.starts_with(&bucket_name) {
            let bound = series
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|le| le.parse::<f64>().ok())
                .unwrap_or(f64::INFINITY);
            let value = value.parse::<u64>().unwrap_or(0);
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, n)) => *n += value,
                None => buckets.push((bound, value)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    summary.p99_bound = buckets
        .iter()
        .find(|(_, n)| *n as f64 >= summary.count as f64 * 0.99)
        .map_or(f64::INFINITY, |(bound, _)| *bound);
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_matching_series_and_finds_the_p99_bucket() {
        let text = "\
# TYPE t histogram
t_sum{stage=\"commit\",service=\"a\"} 1.5
t_count{stage=\"commit\",service=\"a\"} 100
t_bucket{le=\"0.01\",stage=\"commit\",service=\"a\"} 98
t_bucket{le=\"0.1\",stage=\"commit\",service=\"a\"} 100
t_bucket{le=\"+Inf\",stage=\"commit\",service=\"a\"} 100
t_sum{stage=\"produce\",service=\"a\"} 9.0
t_count{stage=\"produce\",service=\"a\"} 3
";
        let commit = histogram(text, "t", "stage=\"commit\"");
        assert_eq!(commit.count, 100);
        assert!((commit.mean() - 0.015).abs() < 1e-9);
        assert!((commit.p99_bound - 0.1).abs() < 1e-9);
        assert_eq!(histogram(text, "t", "").count, 103);
    }
}
