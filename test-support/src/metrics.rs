//! Reading a histogram back from Prometheus text, for benchmarks that print where the
//! time of a path goes.

/// A histogram summed over its series that carry every wanted label: how many
/// observations, their sum, and the upper bound of the bucket that holds the 99th
/// percentile.
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

/// A sample line: the metric's name, its labels and its value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

fn sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split(',')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key, value.trim_matches('"')))
        })
        .collect();
    Some((name, labels, value))
}

/// Count, sum and cumulative buckets of `name`'s histogram in `text`, over the series
/// carrying every pair of `wanted`.
fn read(text: &str, name: &str, wanted: &[(&str, &str)]) -> (u64, f64, Vec<(f64, u64)>) {
    let (mut count, mut sum) = (0, 0.0);
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for (metric, labels, value) in text.lines().filter_map(sample) {
        if !wanted.iter().all(|w| labels.contains(w)) {
            continue;
        }
        match metric.strip_prefix(name) {
            Some("_count") => count += value.parse::<u64>().unwrap_or(0),
            Some("_sum") => sum += value.parse::<f64>().unwrap_or(0.0),
            Some("_bucket") => {
                let bound = labels
                    .iter()
                    .find(|(key, _)| *key == "le")
                    .and_then(|(_, le)| le.parse::<f64>().ok())
                    .unwrap_or(f64::INFINITY);
                let value = value.parse::<u64>().unwrap_or(0);
                match buckets.iter_mut().find(|(b, _)| *b == bound) {
                    Some((_, n)) => *n += value,
                    None => buckets.push((bound, value)),
                }
            }
            _ => {}
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (count, sum, buckets)
}

fn summary(count: u64, sum: f64, buckets: &[(f64, u64)]) -> Summary {
    let p99_bound = buckets
        .iter()
        .find(|(_, n)| *n as f64 >= count as f64 * 0.99)
        .map_or(f64::INFINITY, |(bound, _)| *bound);
    Summary {
        count,
        sum,
        p99_bound,
    }
}

/// `name`'s histogram in `text` (Prometheus text exposition, metric names with their
/// prefix), over the series carrying every pair of `wanted`.
pub fn histogram(text: &str, name: &str, wanted: &[(&str, &str)]) -> Summary {
    let (count, sum, buckets) = read(text, name, wanted);
    summary(count, sum, &buckets)
}

/// What `name`'s histogram observed between two scrapes; fails when it observed nothing
/// (a renamed metric or label would otherwise print zeros).
pub fn observed(before: &str, after: &str, name: &str, wanted: &[(&str, &str)]) -> Summary {
    let (count_a, sum_a, buckets_a) = read(after, name, wanted);
    let (count_b, sum_b, buckets_b) = read(before, name, wanted);
    assert!(
        count_a > count_b,
        "no observation of {name} {wanted:?} between the scrapes"
    );
    let buckets: Vec<(f64, u64)> = buckets_a
        .iter()
        .map(|(bound, n)| {
            let earlier = buckets_b
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0, |(_, m)| *m);
            (*bound, n - earlier)
        })
        .collect();
    summary(count_a - count_b, sum_a - sum_b, &buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE t histogram
t_sum{service=\"a\",stage=\"commit\"} 1.5
t_count{service=\"a\",stage=\"commit\"} 100
t_bucket{le=\"0.01\",service=\"a\",stage=\"commit\"} 98
t_bucket{le=\"0.1\",service=\"a\",stage=\"commit\"} 100
t_bucket{le=\"+Inf\",service=\"a\",stage=\"commit\"} 100
t_sum{service=\"a\",stage=\"produce\"} 9.0
t_count{service=\"a\",stage=\"produce\"} 3
t_total_count{service=\"a\",stage=\"commit\"} 7
xt_count{service=\"a\",stage=\"commit\"} 5
t_count{xstage=\"commit\"} 11
";

    #[test]
    fn sums_the_series_with_every_wanted_label_and_finds_the_p99_bucket() {
        let commit = histogram(TEXT, "t", &[("stage", "commit"), ("service", "a")]);
        assert_eq!(commit.count, 100);
        assert!((commit.mean() - 0.015).abs() < 1e-9);
        assert!((commit.p99_bound - 0.1).abs() < 1e-9);
        assert_eq!(histogram(TEXT, "t", &[]).count, 114);
        assert_eq!(histogram(TEXT, "t", &[("stage", "none")]).count, 0);
    }

    #[test]
    fn the_change_between_scrapes_needs_an_observation() {
        let empty = "";
        assert_eq!(observed(empty, TEXT, "t", &[("stage", "produce")]).count, 3);
        let commit = observed(empty, TEXT, "t", &[("stage", "commit")]);
        assert!((commit.p99_bound - 0.1).abs() < 1e-9);
        let nothing = std::panic::catch_unwind(|| observed(TEXT, TEXT, "t", &[]));
        assert!(nothing.is_err());
    }
}
