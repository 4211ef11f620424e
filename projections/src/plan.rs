//! A view's definition compiled for incremental maintenance: DataFusion parses and plans the `SELECT`, this
//! module checks that the plan is of the class an append-only log makes cheap to maintain, and turns it into
//! the steps a fold runs on each batch of new events: filters and projections (DataFusion's physical
//! expressions) before the rows are kept, or grouped into DataFusion's accumulators, then filters and
//! projections over the groups' final values (`HAVING`, the select list) when the view is read.
//!
//! What is refused is refused here, with the construct named: joins, window functions, `ORDER BY`, `LIMIT`,
//! `UNION`, subqueries, aggregates over aggregates, grouping sets, `DISTINCT` aggregates, aggregate
//! functions other than count, sum, min, max, avg, first_value and last_value, functions whose value
//! depends on when they run, and any table but `events`.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::array::RecordBatchOptions;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::SessionState;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::Volatility;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::create_physical_expr;
use datafusion::sql::sqlparser::ast;

use crate::batch::Column;
use crate::error::ViewError;
use crate::schema::events_schema;
use crate::sql;

/// The aggregate functions a view may use: each folds append-only input without ever retracting.
pub const AGGREGATES: [&str; 7] = ["count", "sum", "min", "max", "avg", "first_value", "last_value"];

/// A view's `SELECT`, compiled into the steps of its fold.
#[derive(Debug)]
pub struct ViewPlan {
    /// The columns of `events` the fold decodes, in the order of `input_schema`.
    pub(crate) columns: Arc<[Column]>,
    /// Their schema.
    pub(crate) input_schema: SchemaRef,
    /// Run on each batch of new events, in order.
    pub(crate) before: Vec<Stage>,
    /// What the fold keeps.
    pub(crate) shape: Shape,
    /// The view's columns, as readers see them.
    pub(crate) schema: SchemaRef,
}

/// One step over a batch of rows.
#[derive(Debug)]
pub(crate) enum Stage {
    /// Keeps the rows for which the expression is true.
    Filter(Arc<dyn PhysicalExpr>),
    /// Computes new columns.
    Project {
        /// One expression per output column.
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        /// The output's schema.
        schema: SchemaRef,
    },
}

/// What a view's fold keeps.
#[derive(Debug)]
pub(crate) enum Shape {
    /// The rows themselves (a view without aggregates): each batch's rows are appended.
    Rows,
    /// Groups and their aggregates' state.
    Groups(Grouping),
}

/// A `GROUP BY` (or an aggregate over every row: no keys), compiled.
#[derive(Debug)]
pub(crate) struct Grouping {
    /// The group keys, evaluated on the rows `before` leaves.
    pub(crate) keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The keys' schema.
    pub(crate) key_schema: SchemaRef,
    /// The aggregates, in the select list's order.
    pub(crate) aggregates: Vec<Aggregate>,
    /// Keys then aggregate values: what `after` reads.
    pub(crate) groups_schema: SchemaRef,
    /// Run on the groups' final values when the view is read (`HAVING`, the select list).
    pub(crate) after: Vec<Stage>,
}

/// One aggregate of a grouping.
#[derive(Debug)]
pub(crate) struct Aggregate {
    /// DataFusion's aggregate, which makes the accumulators.
    pub(crate) function: Arc<AggregateFunctionExpr>,
    /// Its arguments then its `ORDER BY` expressions, as its accumulator takes them.
    pub(crate) inputs: Vec<Arc<dyn PhysicalExpr>>,
    /// Its `FILTER (WHERE …)`, if any.
    pub(crate) filter: Option<Arc<dyn PhysicalExpr>>,
}

impl ViewPlan {
    /// Compiles `query` (a view's `SELECT`) with `state`'s functions, or says why the view cannot be
    /// maintained incrementally.
    pub async fn compile(state: &SessionState, query: &ast::Query) -> Result<ViewPlan, ViewError> {
        let context =
            sql::planning_context(state, Arc::new(EmptyTable::new(events_schema())) as Arc<dyn TableProvider>)?;
        let statement =
            datafusion::sql::parser::Statement::Statement(Box::new(ast::Statement::Query(Box::new(query.clone()))));
        let plan = context.state().statement_to_plan(statement).await.map_err(ViewError::planning)?;
        refuse_outside_class(&plan)?;
        let plan = context.state().optimize(&plan).map_err(ViewError::planning)?;
        compile_plan(&plan)
    }

    /// The view's columns.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Whether the view groups (its state is its groups' aggregates) rather than keeping rows.
    pub fn groups(&self) -> bool {
        matches!(self.shape, Shape::Groups(_))
    }
}

/// Runs `stages` over `batch`, in order.
pub(crate) fn run_stages(stages: &[Stage], mut batch: RecordBatch) -> datafusion::error::Result<RecordBatch> {
    for stage in stages {
        batch = match stage {
            Stage::Filter(predicate) => {
                let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                filter_record_batch(&batch, mask.as_boolean())?
            }
            Stage::Project { exprs, schema } => {
                let rows = batch.num_rows();
                let columns = exprs
                    .iter()
                    .map(|expr| expr.evaluate(&batch)?.into_array(rows))
                    .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
                let options = RecordBatchOptions::new().with_row_count(Some(rows));
                RecordBatch::try_new_with_options(schema.clone(), columns, &options)?
            }
        };
    }
    Ok(batch)
}

/// Evaluates `expr` over `batch` as an array of its rows.
pub(crate) fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> datafusion::error::Result<ArrayRef> {
    expr.evaluate(batch)?.into_array(batch.num_rows())
}

/// Refuses a plan (before optimization, so the message names what was written) that uses anything outside
/// the class views maintain.
fn refuse_outside_class(plan: &LogicalPlan) -> Result<(), ViewError> {
    let mut refusal = None;
    let mut aggregates = 0;
    plan.apply_with_subqueries(|node| {
        refusal = refused_node(node, &mut aggregates).or_else(|| refused_expressions(node));
        Ok(if refusal.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })
    .map_err(ViewError::planning)?;
    match refusal {
        Some(construct) => Err(ViewError::NotMaintainable(construct)),
        None => Ok(()),
    }
}

/// Why `node` cannot be in a view, if it cannot.
fn refused_node(node: &LogicalPlan, aggregates: &mut usize) -> Option<String> {
    let not_supported = |what: &str| Some(format!("{what} not supported in materialized views"));
    match node {
        LogicalPlan::Join(_) => not_supported("joins are"),
        LogicalPlan::Window(_) => not_supported("window functions (OVER) are"),
        LogicalPlan::Sort(_) => not_supported("ORDER BY is (order when you query the view):"),
        LogicalPlan::Limit(_) => not_supported("LIMIT and OFFSET are"),
        LogicalPlan::Union(_) => not_supported("UNION is"),
        LogicalPlan::Subquery(_) => not_supported("subqueries are"),
        LogicalPlan::RecursiveQuery(_) => not_supported("recursive queries are"),
        LogicalPlan::Unnest(_) => not_supported("UNNEST is"),
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
            Some("a materialized view must read the events table".to_owned())
        }
        LogicalPlan::TableScan(scan) if scan.table_name.table() != "events" => Some(format!(
            "a materialized view reads the events table only, not {} (views over views or other tables are not supported)",
            scan.table_name
        )),
        LogicalPlan::Aggregate(aggregate) => {
            *aggregates += 1;
            if *aggregates > 1 {
                return not_supported("an aggregate over another aggregate (GROUP BY in a subquery) is");
            }
            if aggregate.group_expr.iter().any(|expr| matches!(expr, Expr::GroupingSet(_))) {
                return not_supported("GROUPING SETS, ROLLUP and CUBE are");
            }
            aggregate.aggr_expr.iter().find_map(refused_aggregate)
        }
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Distinct(_)
        | LogicalPlan::TableScan(_) => None,
        other => Some(format!("{} is not supported in materialized views", other.display())),
    }
}

/// Why the aggregate `expr` cannot be in a view, if it cannot.
fn refused_aggregate(expr: &Expr) -> Option<String> {
    let mut refusal = None;
    // Infallible: the closure never fails.
    let _ = expr.apply(|expr| {
        if let Expr::AggregateFunction(function) = expr {
            let name = function.func.name();
            if !AGGREGATES.contains(&name) {
                refusal = Some(format!(
                    "aggregate function {name} is not supported in materialized views (they fold {})",
                    AGGREGATES.join(", ")
                ));
            } else if function.params.distinct {
                refusal = Some(format!("{name}(DISTINCT …) is not supported in materialized views"));
            }
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    refusal
}

/// Why an expression of `node` cannot be in a view (a subquery, a function whose value changes between
/// runs), if one cannot.
fn refused_expressions(node: &LogicalPlan) -> Option<String> {
    let mut refusal = None;
    // Infallible: the closures never fail.
    let _ = node.apply_expressions(|expr| {
        expr.apply(|expr| {
            refusal = match expr {
                Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_) => {
                    Some("subqueries are not supported in materialized views".to_owned())
                }
                Expr::ScalarFunction(function) if function.func.signature().volatility != Volatility::Immutable => {
                    Some(format!(
                        "{}() is not allowed in a materialized view: its value depends on when it runs, and every node folds at its own time",
                        function.func.name()
                    ))
                }
                _ => None,
            };
            Ok(if refusal.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
        })
    });
    refusal
}

/// Compiles an optimized plan already known to be in the class.
fn compile_plan(plan: &LogicalPlan) -> Result<ViewPlan, ViewError> {
    let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let (after, rest) = peel_stages(plan)?;
    match rest {
        LogicalPlan::Aggregate(aggregate) => {
            let Input { stages: before, columns, schema: input_schema } = scan_and_stages(&aggregate.input)?;
            let input = aggregate.input.schema();
            let keys = aggregate.group_expr.iter().map(|expr| physical(expr, input)).collect::<Result<Vec<_>, _>>()?;
            let groups_schema: SchemaRef = Arc::new(aggregate.schema.as_arrow().clone());
            let key_schema = Arc::new(
                groups_schema
                    .project(&(0..keys.len()).collect::<Vec<_>>())
                    .map_err(|error| ViewError::Internal(format!("the group keys' schema: {error}")))?,
            );
            let aggregates =
                aggregate.aggr_expr.iter().map(|expr| compile_aggregate(expr, input)).collect::<Result<Vec<_>, _>>()?;
            let grouping = Grouping { keys, key_schema, aggregates, groups_schema, after };
            Ok(ViewPlan { columns, input_schema, before, shape: Shape::Groups(grouping), schema })
        }
        _ => {
            let Input { stages: before, columns, schema: input_schema } = scan_and_stages(plan)?;
            Ok(ViewPlan { columns, input_schema, before, shape: Shape::Rows, schema })
        }
    }
}

/// The aggregate `expr` over rows of `input`, compiled.
fn compile_aggregate(expr: &Expr, input: &DFSchema) -> Result<Aggregate, ViewError> {
    let (props, context) = (ExecutionProps::new(), PhysicalPlanningContext::default());
    // Named as DataFusion names an aggregate's output column.
    let name = match expr {
        Expr::Alias(alias) => alias.name.clone(),
        other => other.schema_name().to_string(),
    };
    let lowered = LoweredAggregateBuilder::new(expr, input, input.as_arrow(), &props, &context)
        .with_name(name)
        .build()
        .map_err(ViewError::planning)?;
    let (function, filter) = (lowered.aggregate, lowered.filter);
    if !function.groups_accumulator_supported() {
        return Err(ViewError::NotMaintainable(format!(
            "{} is not supported in materialized views for these argument types",
            function.name()
        )));
    }
    let all = function.all_expressions();
    let inputs = all.args.into_iter().chain(all.order_by_exprs).collect();
    Ok(Aggregate { function, inputs, filter })
}

/// The filters and projections at the top of `plan` (bottom first), and the node under them.
fn peel_stages(plan: &LogicalPlan) -> Result<(Vec<Stage>, &LogicalPlan), ViewError> {
    let mut stages = Vec::new();
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Projection(projection) => {
                let input = projection.input.schema();
                let exprs = projection.expr.iter().map(|expr| physical(expr, input)).collect::<Result<_, _>>()?;
                stages.push(Stage::Project { exprs, schema: Arc::new(projection.schema.as_arrow().clone()) });
                node = &projection.input;
            }
            LogicalPlan::Filter(filter) => {
                stages.push(Stage::Filter(physical(&filter.predicate, filter.input.schema())?));
                node = &filter.input;
            }
            LogicalPlan::SubqueryAlias(alias) => node = &alias.input,
            // What `DISTINCT ON` leaves above its aggregate: a table's rows have no order, so it goes
            // (an `ORDER BY` written in the definition was refused before planning got here).
            LogicalPlan::Sort(sort) if sort.fetch.is_none() => node = &sort.input,
            _ => break,
        }
    }
    stages.reverse();
    Ok((stages, node))
}

/// What a fold reads and runs before it keeps or groups rows: the scan of `events` under a plan's filters and
/// projections.
struct Input {
    /// The filters and projections, bottom first.
    stages: Vec<Stage>,
    /// The columns of `events` the scan reads.
    columns: Arc<[Column]>,
    /// Their schema.
    schema: SchemaRef,
}

/// The stages over the scan of `events` that `plan` is, with the columns the scan reads.
fn scan_and_stages(plan: &LogicalPlan) -> Result<Input, ViewError> {
    let (stages, rest) = peel_stages(plan)?;
    let LogicalPlan::TableScan(scan) = rest else {
        return Err(ViewError::NotMaintainable(format!(
            "this query's plan has a step views cannot maintain incrementally: {}",
            rest.display()
        )));
    };
    if !scan.filters.is_empty() || scan.fetch.is_some() {
        return Err(ViewError::Internal("the scan of events took filters or a limit while planning a view".into()));
    }
    let all: Vec<usize> = (0..events_schema().fields().len()).collect();
    let indices = scan.projection.clone().unwrap_or(all);
    let columns = indices.iter().map(|index| Column::at(*index)).collect::<Result<Arc<[Column]>, _>>();
    let columns = columns.map_err(|error| ViewError::Internal(error.to_string()))?;
    let input_schema = Arc::new(events_schema().project(&indices).map_err(|e| ViewError::Internal(e.to_string()))?);
    Ok(Input { stages, columns, schema: input_schema })
}

/// `expr`, planned against `schema`.
fn physical(expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>, ViewError> {
    create_physical_expr(expr, schema, &ExecutionProps::new(), &PhysicalPlanningContext::default())
        .map_err(ViewError::planning)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn compile(sql: &str) -> Result<ViewPlan, ViewError> {
        let state = sql::session_state(datafusion::prelude::SessionConfig::new(), None).unwrap();
        let query = sql::parse_query(&state, sql).unwrap();
        ViewPlan::compile(&state, &query).await
    }

    #[tokio::test]
    async fn the_class_compiles_and_everything_else_is_refused_by_name() {
        for good in [
            "SELECT stream, type FROM events WHERE type = 'OrderPlaced'",
            "SELECT type, count(*) AS n FROM events GROUP BY type",
            "SELECT data->>'category' AS category, sum(CAST(data->>'price' AS BIGINT)) AS revenue, avg(revision) \
             FROM events WHERE type = 'Bid' GROUP BY 1 HAVING count(*) > 1",
            "SELECT count(*) FROM events",
            "SELECT DISTINCT ON (stream) stream, type FROM events ORDER BY stream, \"offset\" DESC",
            "SELECT stream, last_value(type ORDER BY \"offset\") AS status FROM events GROUP BY stream",
        ] {
            compile(good).await.unwrap_or_else(|error| panic!("{good}: {error}"));
        }
        for (bad, named) in [
            ("SELECT a.stream FROM events a JOIN events b ON a.stream = b.stream", "joins"),
            ("SELECT stream, row_number() OVER (PARTITION BY stream) FROM events", "window functions"),
            ("SELECT stream FROM events ORDER BY stream", "ORDER BY"),
            ("SELECT stream FROM events LIMIT 3", "LIMIT"),
            ("SELECT median(revision) FROM events", "median"),
            ("SELECT count(DISTINCT stream) FROM events", "DISTINCT"),
            ("SELECT stream, now() FROM events", "now()"),
            ("SELECT stream FROM events UNION ALL SELECT stream FROM events", "UNION"),
            ("SELECT n FROM (SELECT type, count(*) AS n FROM events GROUP BY type) GROUP BY n", "aggregate over"),
            ("SELECT stream FROM events WHERE revision IN (SELECT revision FROM events)", "subqueries"),
            ("SELECT 1", "events table"),
        ] {
            match compile(bad).await {
                Err(ViewError::NotMaintainable(message)) => assert!(message.contains(named), "{bad}: {message}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
