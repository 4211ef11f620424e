//! `fjord sql`: statements against a running region's `Query` service. `fjord sql "SELECT ..."` runs one
//! and prints an aligned table (or `--csv`, or `--json`: one object per row), with where the answer stands
//! in the log on stderr; `fjord sql` alone opens a prompt (line editing, a history file, statements over
//! several lines up to their `;`).

use std::io::IsTerminal;
use std::io::Write;

use anyhow::Context;
use datafusion::arrow::array::Array;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::ipc::reader::StreamDecoder;
use datafusion::arrow::util::display::ArrayFormatter;
use datafusion::arrow::util::display::FormatOptions;
use fjord_proto::v1;
use fjord_proto::v1::query_client::QueryClient;
use fjord_query::ConsistencyToken;
use rustyline::error::ReadlineError;
use serde_json::Value;

use crate::client::AuthorizedChannel;
use crate::client::ClientArgs;
use crate::client::failed;

/// The largest answer message the client takes (the server cuts its messages to about 1 MiB).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How many statements the prompt's history file keeps.
const HISTORY_LINES: usize = 1000;

/// Flags of `fjord sql`.
#[derive(Debug, clap::Args)]
pub struct SqlArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// One statement that reads, e.g. `SELECT type, count(*) FROM events GROUP BY type`; none: a prompt
    /// that runs statements ending in `;` until `\q` or Ctrl-D.
    statement: Option<String>,
    /// Read your writes: wait (bounded) until the node has applied this consistency token, which `fjord
    /// append` prints, before answering.
    #[arg(long)]
    wait_for: Option<String>,
    /// Refuse an answer from materialized views that lag the log by more than this many milliseconds.
    #[arg(long)]
    max_staleness_ms: Option<u64>,
    /// Print CSV (a header, then one line per row) instead of a table.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
}

impl SqlArgs {
    /// Runs the statement (or the prompt) and prints the answers.
    pub async fn run(self) -> anyhow::Result<()> {
        let wait_for = match &self.wait_for {
            Some(text) => {
                let token: ConsistencyToken = text.parse().map_err(|e| anyhow::anyhow!("--wait-for: {e}"))?;
                Some(v1::ConsistencyToken {
                    region: token.region,
                    partition_offsets: token.offsets.into_iter().collect(),
                })
            }
            None => None,
        };
        let channel = self.client.channel().await?;
        let mut client = QueryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        match &self.statement {
            Some(statement) => self.answer(&mut client, statement, wait_for).await,
            None => self.prompt(&mut client, wait_for).await,
        }
    }

    /// Runs `statement` and prints its answer.
    async fn answer(
        &self,
        client: &mut QueryClient<AuthorizedChannel>,
        statement: &str,
        wait_for: Option<v1::ConsistencyToken>,
    ) -> anyhow::Result<()> {
        let max_staleness_ms = self.max_staleness_ms.unwrap_or(0);
        let request = v1::SqlRequest { sql: statement.to_owned(), wait_for, max_staleness_ms };
        let answer = collect(client, request).await?;
        if !answer.command.is_empty() {
            println!("{}", answer.command);
            if answer.command.starts_with("CREATE") && std::io::stderr().is_terminal() {
                follow_builds(client).await?;
            }
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        match (self.client.json, self.csv) {
            (true, _) => answer.print_json(&mut out)?,
            (_, true) => answer.print_csv(&mut out)?,
            _ => answer.print_table(&mut out)?,
        }
        out.flush()?;
        eprintln!("{}", answer.summary());
        Ok(())
    }

    /// The prompt: reads statements (each up to its `;`, over as many lines as it takes), runs each and
    /// prints its answer or its error, until `\q`, `exit` or Ctrl-D. History lives in
    /// `$HOME/.fjord_sql_history`.
    async fn prompt(
        &self,
        client: &mut QueryClient<AuthorizedChannel>,
        wait_for: Option<v1::ConsistencyToken>,
    ) -> anyhow::Result<()> {
        let config = rustyline::Config::builder().max_history_size(HISTORY_LINES)?.auto_add_history(false).build();
        let mut editor = rustyline::DefaultEditor::with_config(config)?;
        let history = std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".fjord_sql_history"));
        if let Some(history) = &history {
            // A first run has no history yet.
            let _ = editor.load_history(history);
        }
        let mut statement = String::new();
        loop {
            let prompt = if statement.is_empty() { "fjord> " } else { "  ...> " };
            let line = match tokio::task::block_in_place(|| editor.readline(prompt)) {
                Ok(line) => line,
                // Ctrl-C drops the statement being typed, as psql does.
                Err(ReadlineError::Interrupted) => {
                    statement.clear();
                    continue;
                }
                Err(ReadlineError::Eof) => break,
                Err(error) => return Err(error.into()),
            };
            let trimmed = line.trim();
            if statement.is_empty() && matches!(trimmed, "\\q" | "quit" | "exit") {
                break;
            }
            if trimmed.is_empty() && statement.is_empty() {
                continue;
            }
            statement.push_str(&line);
            statement.push('\n');
            if !trimmed.ends_with(';') {
                continue;
            }
            let text = std::mem::take(&mut statement);
            let _ = editor.add_history_entry(text.trim_end());
            // Saved at once: Ctrl-C during a long answer ends the process.
            if let Some(history) = &history {
                let _ = editor.save_history(history);
            }
            if let Err(error) = self.answer(client, text.trim().trim_end_matches(';'), wait_for.clone()).await {
                eprintln!("error: {error:#}");
            }
        }
        Ok(())
    }
}

/// Flags of `fjord views`.
#[derive(Debug, clap::Args)]
pub struct ViewsArgs {
    #[command(flatten)]
    client: ClientArgs,
}

impl ViewsArgs {
    /// Lists the region's views (`SHOW VIEWS`) and, on a terminal, follows any being built until they serve.
    pub async fn run(self) -> anyhow::Result<()> {
        let channel = self.client.channel().await?;
        let mut client = QueryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let request = v1::SqlRequest { sql: "SHOW VIEWS".to_owned(), wait_for: None, max_staleness_ms: 0 };
        let answer = collect(&mut client, request).await?;
        let mut out = std::io::stdout().lock();
        match self.client.json {
            true => answer.print_json(&mut out)?,
            false => answer.print_table(&mut out)?,
        }
        out.flush()?;
        drop(out);
        if std::io::stderr().is_terminal() {
            follow_builds(&mut client).await?;
        }
        Ok(())
    }
}

/// Runs `request` and gathers its whole answer.
async fn collect(client: &mut QueryClient<AuthorizedChannel>, request: v1::SqlRequest) -> anyhow::Result<Answer> {
    let mut responses = client.sql(request).await.map_err(failed)?.into_inner();
    let mut answer = Answer::default();
    while let Some(response) = responses.message().await.map_err(failed)? {
        if let Some(freshness) = response.freshness {
            answer.freshness = Some(freshness);
        }
        if !response.command.is_empty() {
            answer.command = response.command;
        }
        answer.decode(response.arrow_ipc)?;
    }
    answer.decoder.finish().context("the answer ended before its end marker")?;
    Ok(answer)
}

/// What `fjord_views` says of the versions being built.
const BUILDS: &str = "SELECT name, building_version, build_done, build_total, build_rate, build_eta_s, status, error \
                      FROM fjord_views WHERE status IN ('building', 'replacing', 'failed') ORDER BY name";

/// Draws a progress bar per view being built (on stderr) until none is: offsets folded of the total, rate
/// and time left, as `fjord_views` reports them.
async fn follow_builds(client: &mut QueryClient<AuthorizedChannel>) -> anyhow::Result<()> {
    let mut drawn = 0;
    loop {
        let answer =
            collect(client, v1::SqlRequest { sql: BUILDS.to_owned(), wait_for: None, max_staleness_ms: 0 }).await?;
        let rows = answer.rows()?;
        let mut err = std::io::stderr().lock();
        if drawn > 0 {
            // Back over the lines drawn last time.
            write!(err, "\x1b[{drawn}F\x1b[J")?;
        }
        let mut building = 0;
        for row in &rows {
            let cell = |index: usize| row.get(index).cloned().flatten().unwrap_or_default();
            let number = |index: usize| cell(index).parse::<f64>().unwrap_or(0.0);
            let (name, version, status) = (cell(0), cell(1), cell(6));
            if status == "failed" {
                writeln!(err, "{name}: failed: {}", cell(7))?;
                continue;
            }
            building += 1;
            let (done, total) = (number(2), number(3).max(1.0));
            let filled = ((done / total) * 30.0).clamp(0.0, 30.0) as usize;
            writeln!(
                err,
                "{name} v{version} [{}{}] {:>5.1}%  {}/{} events  {:.0} events/s  ETA {:.0}s",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                100.0 * done / total,
                done as u64,
                total as u64,
                number(4),
                number(5),
            )?;
        }
        drawn = rows.len();
        err.flush()?;
        if building == 0 {
            if rows.is_empty() && drawn == 0 {
                eprintln!("every view serves");
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// An answer as it arrives.
#[derive(Default)]
struct Answer {
    decoder: StreamDecoder,
    batches: Vec<RecordBatch>,
    freshness: Option<v1::Freshness>,
    /// The command tag of a statement that answers no rows.
    command: String,
}

impl Answer {
    fn decode(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        let mut buffer = Buffer::from(bytes);
        while !buffer.is_empty() {
            if let Some(batch) = self.decoder.decode(&mut buffer).context("decoding the answer")? {
                self.batches.push(batch);
            }
        }
        Ok(())
    }

    fn column_names(&self) -> Vec<String> {
        self.decoder.schema().map_or_else(Vec::new, |schema| schema.fields().iter().map(|f| f.name().clone()).collect())
    }

    /// Every row as its columns' display texts (`None`: NULL).
    fn rows(&self) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let options = FormatOptions::new();
        let mut rows = Vec::new();
        for batch in &self.batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()?;
            for row in 0..batch.num_rows() {
                let cells = batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(column, formatter)| (!column.is_null(row)).then(|| formatter.value(row).to_string()))
                    .collect();
                rows.push(cells);
            }
        }
        Ok(rows)
    }

    fn print_table(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let names = self.column_names();
        let rows = self.rows()?;
        let numeric = self.numeric_columns();
        let cell = |value: &Option<String>| crate::client::printable(value.as_deref().unwrap_or("NULL")).into_owned();
        let mut widths: Vec<usize> = names.iter().map(|name| name.chars().count()).collect();
        for row in &rows {
            for (width, value) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell(value).chars().count());
            }
        }
        let line = |cells: Vec<String>| -> String {
            let padded: Vec<String> = cells
                .into_iter()
                .zip(&widths)
                .zip(&numeric)
                .map(|((text, width), numeric)| match numeric {
                    true => format!("{text:>width$}"),
                    false => format!("{text:<width$}"),
                })
                .collect();
            padded.join(" | ").trim_end().to_owned()
        };
        writeln!(out, "{}", line(names.iter().map(|name| printable_owned(name)).collect()))?;
        writeln!(out, "{}", widths.iter().map(|width| "-".repeat(*width)).collect::<Vec<_>>().join("-+-"))?;
        for row in &rows {
            writeln!(out, "{}", line(row.iter().map(cell).collect()))?;
        }
        Ok(())
    }

    fn print_csv(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let quote = |text: &str| match text.contains([',', '"', '\n', '\r']) {
            true => format!("\"{}\"", text.replace('"', "\"\"")),
            false => text.to_owned(),
        };
        writeln!(out, "{}", self.column_names().iter().map(|name| quote(name)).collect::<Vec<_>>().join(","))?;
        for row in self.rows()? {
            let cells: Vec<String> = row.iter().map(|value| value.as_deref().map(quote).unwrap_or_default()).collect();
            writeln!(out, "{}", cells.join(","))?;
        }
        Ok(())
    }

    fn print_json(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let names = self.column_names();
        let numeric = self.numeric_columns();
        let booleans = self.columns_of(|data_type| matches!(data_type, DataType::Boolean));
        for row in self.rows()? {
            let object: serde_json::Map<String, Value> = names
                .iter()
                .zip(row)
                .enumerate()
                .map(|(index, (name, value))| {
                    let value = match value {
                        None => Value::Null,
                        Some(text) if numeric[index] || booleans[index] => {
                            serde_json::from_str(&text).unwrap_or(Value::String(text))
                        }
                        Some(text) => Value::String(text),
                    };
                    (name.clone(), value)
                })
                .collect();
            writeln!(out, "{}", Value::Object(object))?;
        }
        Ok(())
    }

    fn numeric_columns(&self) -> Vec<bool> {
        self.columns_of(DataType::is_numeric)
    }

    fn columns_of(&self, kind: impl Fn(&DataType) -> bool) -> Vec<bool> {
        self.decoder
            .schema()
            .map_or_else(Vec::new, |schema| schema.fields().iter().map(|f| kind(f.data_type())).collect())
    }

    /// How many rows, and where the answer stands in the log.
    fn summary(&self) -> String {
        let rows: usize = self.batches.iter().map(RecordBatch::num_rows).sum();
        let Some(freshness) = &self.freshness else { return format!("({rows} rows)") };
        let mut offsets: Vec<(u32, u64)> = freshness.applied_offsets.iter().map(|(p, o)| (*p, *o)).collect();
        offsets.sort_unstable();
        let offsets: Vec<String> = offsets.iter().map(|(partition, offset)| format!("{partition}:{offset}")).collect();
        format!("({rows} rows; as of node {}'s applied log, partition:offset {})", freshness.node_id, offsets.join(" "))
    }
}

fn printable_owned(text: &str) -> String {
    crate::client::printable(text).into_owned()
}
