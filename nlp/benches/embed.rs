//! Embedding throughput in sentences per second.
//!
//! Two workloads: the 50 reference sentences repeated 8 times, and the first
//! 1,000 sentences (by the crate's splitter) of the ctakes-examples notes in
//! `INFOCTOR_TEST_DATA`. The note sentences are also written to a file so
//! that `reference/bench_sentence_transformers.py` can time
//! sentence-transformers on the same input. Candle uses every core the
//! process may run on; set `RAYON_NUM_THREADS` to limit it.
//!
//! Each workload runs three times per batch size. The output gives the best
//! wall-clock rate and, for that run, the rate per CPU-second of the process
//! (user plus system time from `/proc/self/stat`), which other load on the
//! machine disturbs less than wall-clock time.
//!
//! Run with `cargo bench -p infoctor-nlp --bench embed`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use infoctor_nlp::Embedder;
use infoctor_nlp::model_files::{MINILM_DIR_NAME, fetch_minilm};
use infoctor_nlp::sections::detect_sections;
use infoctor_nlp::sentences::split_sentences;
use infoctor_nlp::terminology::open_text;

const REPEATS: usize = 8;
const NOTE_SENTENCES: usize = 1_000;
const RUNS: usize = 3;

fn main() -> anyhow::Result<()> {
    let cache = std::env::var_os("INFOCTOR_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.model-cache")));
    let model_dir = cache.join(MINILM_DIR_NAME);
    fetch_minilm(&model_dir)?;

    let started = Instant::now();
    let embedder = Embedder::load(&model_dir)?;
    println!("model load with full hash check: {:.2?}", started.elapsed());

    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/reference/sentences.txt"
    ))?;
    let reference: Vec<&str> = reference.lines().collect();
    let repeated: Vec<&str> = reference
        .iter()
        .copied()
        .cycle()
        .take(reference.len() * REPEATS)
        .collect();

    let notes = note_sentences()?;
    let output = std::env::temp_dir().join("infoctor-nlp-bench-note-sentences.txt");
    let mut file = std::fs::File::create(&output)?;
    for sentence in &notes {
        // One sentence per line, so line breaks inside a sentence become spaces.
        writeln!(
            file,
            "{}",
            sentence.split_whitespace().collect::<Vec<_>>().join(" ")
        )?;
    }
    println!("note sentences written to {}", output.display());
    let notes: Vec<&str> = notes.iter().map(String::as_str).collect();

    // Warm-up: first calls allocate buffers and spin up the thread pool.
    embedder.embed(&reference[..8])?;

    for batch_size in [32, 64] {
        let embedder = Embedder::load(&model_dir)?.with_batch_size(batch_size);
        embedder.embed(&reference[..8])?;
        time("reference sentences x8", batch_size, &embedder, &repeated)?;
        time("ctakes note sentences", batch_size, &embedder, &notes)?;
    }
    Ok(())
}

fn time(
    label: &str,
    batch_size: usize,
    embedder: &Embedder,
    sentences: &[&str],
) -> anyhow::Result<()> {
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..RUNS {
        let cpu_before = process_cpu_seconds()?;
        let started = Instant::now();
        let vectors = embedder.embed(sentences)?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu_seconds = process_cpu_seconds()? - cpu_before;
        assert_eq!(vectors.len(), sentences.len());
        if best.is_none_or(|(best_seconds, _)| seconds < best_seconds) {
            best = Some((seconds, cpu_seconds));
        }
    }
    let (seconds, cpu_seconds) = best.expect("at least one run");
    let count = sentences.len() as f64;
    println!(
        "{label:<24} batch {batch_size:>3}: {:>5} sentences, best of {RUNS}: {seconds:>6.2} s = {:>6.1} sentences/s; {cpu_seconds:>6.2} CPU-s = {:>6.1} sentences per CPU-second",
        sentences.len(),
        count / seconds,
        count / cpu_seconds
    );
    Ok(())
}

/// Returns the user plus system CPU time of this process, in seconds.
fn process_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, in clock ticks of 1/100 s.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/self/stat format"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: f64 = fields[11].parse()?;
    let system: f64 = fields[12].parse()?;
    Ok((user + system) / 100.0)
}

/// Collects the first sentences of at least three words from the
/// ctakes-examples notes.
fn note_sentences() -> anyhow::Result<Vec<String>> {
    let data = std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    let path = data.join("clinical-notes-ctakes-examples/notes.jsonl.gz");
    let mut sentences = Vec::with_capacity(NOTE_SENTENCES);
    for line in open_text(&path)?.lines() {
        let note: serde_json::Value = serde_json::from_str(&line?)?;
        let text = note["text"].as_str().unwrap_or_default();
        for section in detect_sections(text) {
            for range in split_sentences(text, section.body_start..section.body_end) {
                let sentence = &text[range];
                if sentence.split_whitespace().count() >= 3 {
                    sentences.push(sentence.to_string());
                }
                if sentences.len() == NOTE_SENTENCES {
                    return Ok(sentences);
                }
            }
        }
    }
    Ok(sentences)
}
