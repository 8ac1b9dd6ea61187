//! Single-threaded flattening throughput of the built-in patient and observation views.
//!
//! Reads the Patient (400) and Observation (58,016) resources of the 2019 Synthea set, parses
//! them once, and measures how many resources per second one thread turns into record
//! batches, cutting a batch every 65,536 rows as a streaming caller would. JSON parsing is
//! measured separately, because callers may already hold parsed resources.
//!
//! Each benchmark runs twice: with wall-clock time (the groups `patient` and `observation`)
//! and with the CPU time of the benchmark thread (`patient-cpu`, `observation-cpu`), read
//! from `/proc/thread-self/schedstat`. On a machine shared with other work, the CPU-time
//! figures show the cost of the code itself, while the wall-clock ones also include time the
//! thread spent waiting for a core. The CPU-time groups run on Linux only.
//!
//! ```text
//! cargo bench -p infoctor-sql-on-fhir --bench flatten
//! ```
//!
//! Test data: `INFOCTOR_TEST_DATA` (default `../shared/data` beside the workspace), which must
//! contain `synthea-r4-2019/ndjson/`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use infoctor_sql_on_fhir::{CompiledView, builtin_view};
use serde_json::Value;

const BATCH_ROWS: usize = 65_536;

fn data_dir() -> PathBuf {
    std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

/// Returns the NDJSON lines of one resource type of the 2019 Synthea set.
fn read_lines(resource_type: &str) -> Vec<String> {
    let path = data_dir().join(format!("synthea-r4-2019/ndjson/{resource_type}.ndjson.gz"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; set INFOCTOR_TEST_DATA", path.display());
    });
    BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(|line| line.unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|line| !line.trim().is_empty())
        .collect()
}

fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("invalid JSON: {e}")))
        .collect()
}

/// Flattens every resource through the view, cutting batches as a streaming caller would,
/// and returns the number of rows.
fn flatten(view: &CompiledView, resources: &[Value]) -> usize {
    let mut builder = view.builder();
    let mut rows = 0;
    for resource in resources {
        builder
            .append(resource)
            .unwrap_or_else(|e| panic!("flattening failed: {e}"));
        if builder.num_rows() >= BATCH_ROWS {
            rows += builder.finish().map(|b| b.num_rows()).unwrap_or(0);
        }
    }
    rows + builder.finish().map(|b| b.num_rows()).unwrap_or(0)
}

/// Criterion measurement of the CPU time the benchmark thread used, in nanoseconds.
struct ThreadCpuTime;

impl ThreadCpuTime {
    /// Reads the thread's time on a CPU so far, the first field of `schedstat`.
    fn now() -> u64 {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat")
            .unwrap_or_else(|e| panic!("/proc/thread-self/schedstat: {e}; CPU time needs Linux"));
        text.split_whitespace()
            .next()
            .and_then(|field| field.parse().ok())
            .unwrap_or_else(|| panic!("unexpected /proc/thread-self/schedstat: {text}"))
    }
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        Self::now()
    }

    fn end(&self, start: u64) -> u64 {
        Self::now().saturating_sub(start)
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuTimeFormatter
    }
}

/// Formats nanoseconds of CPU time and resources per CPU-second.
struct CpuTimeFormatter;

impl ValueFormatter for CpuTimeFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e-3, "µs cpu")
        } else if typical < 1e9 {
            (1e-6, "ms cpu")
        } else {
            (1e-9, "s cpu")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let count = match throughput {
            Throughput::Elements(n)
            | Throughput::Bytes(n)
            | Throughput::BytesDecimal(n)
            | Throughput::Bits(n) => *n as f64,
        };
        values.iter_mut().for_each(|v| *v = count * 1e9 / *v / 1e3);
        "Kelem/cpu-s"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn bench_view<M: Measurement>(
    c: &mut Criterion<M>,
    group_name: &str,
    view_name: &str,
    resource_type: &str,
) {
    let definition =
        builtin_view(view_name).unwrap_or_else(|| panic!("no built-in view {view_name}"));
    let view = CompiledView::compile(&definition).unwrap_or_else(|e| panic!("{e}"));
    let lines = read_lines(resource_type);
    let resources = parse(&lines);
    let count = resources.len() as u64;

    let mut group = c.benchmark_group(group_name);
    group.sample_size(10);
    group.throughput(Throughput::Elements(count));
    group.bench_function("flatten parsed resources", |b| {
        b.iter(|| flatten(&view, &resources));
    });
    group.bench_function("parse JSON and flatten", |b| {
        b.iter_batched(
            || (),
            |()| flatten(&view, &parse(&lines)),
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn wall_time(c: &mut Criterion) {
    bench_view(c, "patient", "patient", "Patient");
    bench_view(c, "observation", "observation", "Observation");
}

fn cpu_time(c: &mut Criterion<ThreadCpuTime>) {
    bench_view(c, "patient-cpu", "patient", "Patient");
    bench_view(c, "observation-cpu", "observation", "Observation");
}

criterion_group!(wall, wall_time);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = cpu_time
}
criterion_main!(wall, cpu);
