//! The PDF form of a monthly report: a summary page (totals, and a chart of
//! orders and amount per day), then the table of every order, a page at a
//! time, with the totals at its end.
//!
//! pdf-writer writes each object; this module places the objects in the
//! file itself, so a table page leaves memory as soon as it is full. What
//! stays is the month's day totals and one offset per object for the
//! cross-reference table (16 bytes per table page). What is known only at
//! the end is written at the end and referred to from before: the summary
//! page's content, which needs every order, and the page count, a form
//! XObject that every page's footer draws.
//!
//! Text uses four of the standard fonts every reader has, so nothing is
//! embedded, in the WinAnsi encoding; characters outside it print as '?'.
//! Data is set in Courier, whose fixed advance (0.6 of the size) lets
//! columns align right without font metrics.

use std::io::{self, Write};

use pdf_writer::writers::{Catalog, DocumentInfo};
use pdf_writer::{Chunk, Content, Date, Filter, Finish, Name, Rect, Ref, Str, TextStr};
use time::OffsetDateTime;

use crate::model::order::{Month, Order, OrderStatus, Totals};

/// A4 portrait, in points.
const PAGE_WIDTH: f32 = 595.0;
const PAGE_HEIGHT: f32 = 842.0;
const LEFT: f32 = 40.0;
const RIGHT: f32 = PAGE_WIDTH - LEFT;

/// Order rows on one table page.
pub const ROWS_PER_PAGE: usize = 60;
const ROW_HEIGHT: f32 = 11.5;
/// The baseline of a table page's first row.
const FIRST_ROW: f32 = 752.0;
const DATA_SIZE: f32 = 8.0;
/// Courier's advance, as a share of the font size.
const MONO_ADVANCE: f32 = 0.6;

/// Where the table's columns sit: the row number and the amount are
/// aligned right on their x, the rest left, each cut to its width in
/// characters.
const NUMBER_RIGHT: f32 = 80.0;
const ORDER_X: f32 = 88.0;
const ORDER_CHARS: usize = 30;
const CREATED_X: f32 = 240.0;
const CUSTOMER_X: f32 = 340.0;
const CUSTOMER_CHARS: usize = 20;
const STATUS_X: f32 = 444.0;
const AMOUNT_CHARS: usize = 13;

/// The footer's baseline, and where the page count is drawn.
const FOOTER_Y: f32 = 28.0;
const PAGE_COUNT_X: f32 = 520.0;

/// zlib level for content streams: the fastest, which still shrinks a
/// table page about sixfold.
const COMPRESSION: u8 = 1;

const CATALOG: Ref = Ref::new(1);
const INFO: Ref = Ref::new(2);
const PAGES: Ref = Ref::new(3);
const PAGE_COUNT: Ref = Ref::new(4);
const SUMMARY_PAGE: Ref = Ref::new(5);
const SUMMARY_CONTENT: Ref = Ref::new(6);
const FIRST_FONT: i32 = 7;
/// Table pages hang in groups under page-tree nodes of their own, so that
/// no array of kids grows with the month. Each group takes a run of object
/// numbers: its node, then each page followed by its content.
const FIRST_GROUP: i32 = FIRST_FONT + Font::ALL.len() as i32;
const GROUP_PAGES: i32 = 128;
const GROUP_OBJECTS: i32 = 1 + 2 * GROUP_PAGES;

/// The resource name every page draws the page count by.
const PAGE_COUNT_NAME: Name<'static> = Name(b"N");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Font {
    Sans,
    Bold,
    Mono,
    MonoBold,
}

impl Font {
    const ALL: [Font; 4] = [Font::Sans, Font::Bold, Font::Mono, Font::MonoBold];

    fn resource(self) -> Name<'static> {
        match self {
            Font::Sans => Name(b"F1"),
            Font::Bold => Name(b"F2"),
            Font::Mono => Name(b"F3"),
            Font::MonoBold => Name(b"F4"),
        }
    }

    fn base(self) -> Name<'static> {
        match self {
            Font::Sans => Name(b"Helvetica"),
            Font::Bold => Name(b"Helvetica-Bold"),
            Font::Mono => Name(b"Courier"),
            Font::MonoBold => Name(b"Courier-Bold"),
        }
    }

    fn object(self) -> Ref {
        Ref::new(FIRST_FONT + self as i32)
    }
}

/// The page-tree node of group `g`.
fn group_node(g: i32) -> Ref {
    Ref::new(FIRST_GROUP + g * GROUP_OBJECTS)
}

/// Table page `k` (from 0); its content is the next object.
fn table_page(k: i32) -> Ref {
    Ref::new(group_node(k / GROUP_PAGES).get() + 1 + 2 * (k % GROUP_PAGES))
}

/// What the report is about, printed on every page.
pub struct Heading {
    pub month: Month,
    /// Empty for the default tenant.
    pub tenant: String,
    /// `reports/{uuid}`.
    pub name: String,
    pub generated: OffsetDateTime,
    /// The ISO 4217 code the amounts are in.
    pub currency: String,
}

/// A content stream being drawn, which opens and closes text objects as
/// text and graphics alternate and sets the font only when it changes.
struct Canvas {
    content: Content,
    in_text: bool,
    font: Option<(Font, f32)>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            content: Content::with_capacity(16 * 1024),
            in_text: false,
            font: None,
        }
    }

    /// Draws `text` (WinAnsi bytes) with its baseline starting at (x, y).
    fn text(&mut self, font: Font, size: f32, x: f32, y: f32, text: &[u8]) {
        if !self.in_text {
            self.content.begin_text();
            self.in_text = true;
        }
        if self.font != Some((font, size)) {
            self.content.set_font(font.resource(), size);
            self.font = Some((font, size));
        }
        self.content.set_text_matrix([1.0, 0.0, 0.0, 1.0, x, y]);
        self.content.show(Str(text));
    }

    /// Draws Courier `text` ending at `right`.
    fn text_right(&mut self, font: Font, size: f32, right: f32, y: f32, text: &[u8]) {
        let x = right - text.len() as f32 * MONO_ADVANCE * size;
        self.text(font, size, x, y, text);
    }

    /// The content, for path and colour operators.
    fn graphics(&mut self) -> &mut Content {
        if self.in_text {
            self.content.end_text();
            self.in_text = false;
        }
        &mut self.content
    }

    fn line(&mut self, width: f32, gray: f32, from: (f32, f32), to: (f32, f32)) {
        self.graphics()
            .set_line_width(width)
            .set_stroke_gray(gray)
            .move_to(from.0, from.1)
            .line_to(to.0, to.1)
            .stroke();
    }

    fn finish(mut self) -> Vec<u8> {
        self.graphics();
        self.content.finish().into_vec()
    }
}

/// A PDF report being written.
pub struct PdfReport {
    heading: Heading,
    /// Bytes written so far.
    position: u64,
    /// Each object's offset in the file, by object number.
    offsets: Vec<u64>,
    /// Table pages written.
    table_pages: i32,
    /// The open table page, and how many rows it has.
    page: Option<(Canvas, usize)>,
    /// Orders drawn so far.
    rows: u64,
    /// Totals per day of the month, for the chart.
    days: Vec<Totals>,
    /// Reused for each cell's text.
    cell: Vec<u8>,
}

impl PdfReport {
    pub fn new(heading: Heading) -> Self {
        let days = usize::from(heading.month.days());
        Self {
            heading,
            position: 0,
            offsets: Vec::new(),
            table_pages: 0,
            page: None,
            rows: 0,
            days: vec![Totals::default(); days],
            cell: Vec::with_capacity(64),
        }
    }

    /// Writes the file header.
    pub fn start(&mut self, out: &mut impl Write) -> io::Result<()> {
        // The four high bytes tell transfer programs the file is binary.
        self.emit(out, b"%PDF-1.7\n%\x80\x80\x80\x80\n\n")
    }

    /// Adds rows to the table, writing each page as it fills.
    pub fn rows(&mut self, orders: &[Order], out: &mut impl Write) -> io::Result<()> {
        let month_start = self.heading.month.start_micros();
        for order in orders {
            let (mut canvas, row) = self.open_page(out)?;
            let y = row_y(row);
            self.rows += 1;
            let cell = &mut self.cell;
            cell.clear();
            write!(cell, "{}", self.rows)?;
            canvas.text_right(Font::Mono, DATA_SIZE, NUMBER_RIGHT, y, cell);
            win_ansi(&order.order_id, ORDER_CHARS, cell);
            canvas.text(Font::Mono, DATA_SIZE, ORDER_X, y, cell);
            cell.clear();
            write_time(order.created_at, cell)?;
            canvas.text(Font::Mono, DATA_SIZE, CREATED_X, y, cell);
            win_ansi(&order.customer_id, CUSTOMER_CHARS, cell);
            canvas.text(Font::Mono, DATA_SIZE, CUSTOMER_X, y, cell);
            canvas.text(
                Font::Mono,
                DATA_SIZE,
                STATUS_X,
                y,
                order.status.as_str().as_bytes(),
            );
            cell.clear();
            write_money(order.amount_cents, cell);
            // An amount too wide for its column is set smaller.
            let size = DATA_SIZE * (AMOUNT_CHARS as f32 / cell.len() as f32).min(1.0);
            canvas.text_right(Font::Mono, size, RIGHT, y, cell);
            self.page = Some((canvas, row + 1));

            let day = (order.created_at - month_start) / 86_400_000_000;
            let last = self.days.len() - 1;
            self.days[usize::try_from(day).unwrap_or(0).min(last)].add(order);
        }
        Ok(())
    }

    /// Ends the table with the totals, writes the summary page and the
    /// document's structure, and returns how many pages it has.
    pub fn finish(&mut self, totals: &Totals, out: &mut impl Write) -> io::Result<u32> {
        if self.rows == 0 {
            let (mut canvas, row) = self.open_page(out)?;
            canvas.text(Font::Sans, 9.0, ORDER_X, row_y(row), &self.no_orders());
            self.page = Some((canvas, row + 1));
        }
        // The totals need three rows on the page.
        if self
            .page
            .as_ref()
            .is_some_and(|(_, row)| row + 3 > ROWS_PER_PAGE)
        {
            self.close_page(out)?;
        }
        let (mut canvas, row) = self.open_page(out)?;
        self.draw_totals(&mut canvas, row_y(row), totals);
        self.page = Some((canvas, row));
        self.close_page(out)?;

        let groups = (self.table_pages + GROUP_PAGES - 1) / GROUP_PAGES;
        if self.table_pages % GROUP_PAGES != 0 {
            self.close_group(out, groups - 1)?;
        }
        let pages = self.table_pages + 1;
        let summary = self.summary(totals);
        self.stream_object(out, SUMMARY_CONTENT, &summary)?;
        self.object(out, SUMMARY_PAGE, |chunk| {
            chunk
                .page(SUMMARY_PAGE)
                .parent(PAGES)
                .contents(SUMMARY_CONTENT);
        })?;
        self.page_count(out, pages)?;
        for font in Font::ALL {
            self.object(out, font.object(), |chunk| {
                chunk
                    .type1_font(font.object())
                    .base_font(font.base())
                    .encoding_predefined(Name(b"WinAnsiEncoding"));
            })?;
        }
        self.object(out, PAGES, |chunk| {
            let mut root = chunk.pages(PAGES);
            root.kids(std::iter::once(SUMMARY_PAGE).chain((0..groups).map(group_node)))
                .count(pages)
                .media_box(Rect::new(0.0, 0.0, PAGE_WIDTH, PAGE_HEIGHT));
            let mut resources = root.resources();
            let mut fonts = resources.fonts();
            for font in Font::ALL {
                fonts.pair(font.resource(), font.object());
            }
            fonts.finish();
            resources.x_objects().pair(PAGE_COUNT_NAME, PAGE_COUNT);
        })?;
        self.object(out, CATALOG, |chunk| {
            chunk.indirect(CATALOG).start::<Catalog>().pages(PAGES);
        })?;
        let title = format!("Orders report, {}", self.heading.month.long_name());
        let subject = format!("{} for tenant {}", self.heading.name, self.tenant());
        let created = pdf_date(self.heading.generated);
        self.object(out, INFO, |chunk| {
            chunk
                .indirect(INFO)
                .start::<DocumentInfo>()
                .title(TextStr(&title))
                .subject(TextStr(&subject))
                .producer(TextStr(concat!("longrun ", env!("CARGO_PKG_VERSION"))))
                .creation_date(created);
        })?;
        self.cross_reference(out)?;
        Ok(pages as u32)
    }

    fn tenant(&self) -> &str {
        if self.heading.tenant.is_empty() {
            "(default)"
        } else {
            &self.heading.tenant
        }
    }

    fn no_orders(&self) -> Vec<u8> {
        win_ansi_owned(&format!("No orders in {}.", self.heading.month.long_name()))
    }

    /// The open table page, or a new one with its heading, column heads and
    /// footer, when none is open or the open one is full.
    fn open_page(&mut self, out: &mut impl Write) -> io::Result<(Canvas, usize)> {
        if self
            .page
            .as_ref()
            .is_some_and(|(_, row)| *row >= ROWS_PER_PAGE)
        {
            self.close_page(out)?;
        }
        if let Some(open) = self.page.take() {
            return Ok(open);
        }
        let mut canvas = Canvas::new();
        let title = format!(
            "Orders, {} \u{2013} tenant {}",
            self.heading.month.long_name(),
            self.tenant()
        );
        canvas.text(Font::Bold, 12.0, LEFT, 800.0, &win_ansi_owned(&title));
        let head = FIRST_ROW + 18.0;
        canvas.text_right(Font::MonoBold, DATA_SIZE, NUMBER_RIGHT, head, b"No.");
        canvas.text(Font::MonoBold, DATA_SIZE, ORDER_X, head, b"Order");
        canvas.text(Font::MonoBold, DATA_SIZE, CREATED_X, head, b"Created (UTC)");
        canvas.text(Font::MonoBold, DATA_SIZE, CUSTOMER_X, head, b"Customer");
        canvas.text(Font::MonoBold, DATA_SIZE, STATUS_X, head, b"Status");
        let amount = format!("Amount ({})", self.heading.currency);
        canvas.text_right(Font::MonoBold, DATA_SIZE, RIGHT, head, amount.as_bytes());
        canvas.line(0.6, 0.0, (LEFT, head - 4.0), (RIGHT, head - 4.0));
        self.footer(&mut canvas, self.table_pages + 2);
        Ok((canvas, 0))
    }

    /// Writes the open table page, if any, with a light band behind every
    /// other row.
    fn close_page(&mut self, out: &mut impl Write) -> io::Result<()> {
        let Some((canvas, rows)) = self.page.take() else {
            return Ok(());
        };
        let mut bands = Content::new();
        if rows > 1 {
            bands.set_fill_gray(0.93);
            for row in (1..rows.min(ROWS_PER_PAGE)).step_by(2) {
                bands.rect(LEFT, row_y(row) - 3.0, RIGHT - LEFT, ROW_HEIGHT);
            }
            bands.fill_nonzero().set_fill_gray(0.0);
        }
        let mut data = bands.finish().into_vec();
        data.push(b'\n');
        data.extend_from_slice(&canvas.finish());
        let page = table_page(self.table_pages);
        let content = page.next();
        let group = self.table_pages / GROUP_PAGES;
        self.stream_object(out, content, &data)?;
        self.object(out, page, |chunk| {
            chunk.page(page).parent(group_node(group)).contents(content);
        })?;
        self.table_pages += 1;
        if self.table_pages % GROUP_PAGES == 0 {
            self.close_group(out, group)?;
        }
        Ok(())
    }

    /// Writes the page-tree node of group `g`, whose pages are written.
    fn close_group(&mut self, out: &mut impl Write, g: i32) -> io::Result<()> {
        let first = g * GROUP_PAGES;
        let pages = (self.table_pages - first).min(GROUP_PAGES);
        self.object(out, group_node(g), |chunk| {
            chunk
                .pages(group_node(g))
                .parent(PAGES)
                .kids((first..first + pages).map(table_page))
                .count(pages);
        })
    }

    /// "Page n of", with the count drawn by the shared XObject.
    fn footer(&self, canvas: &mut Canvas, page: i32) {
        let about = format!(
            "longrun \u{b7} {} \u{b7} generated {}",
            self.heading.name,
            generated_text(self.heading.generated)
        );
        canvas.graphics().set_fill_gray(0.35);
        canvas.text(Font::Sans, 7.0, LEFT, FOOTER_Y, &win_ansi_owned(&about));
        let label = format!("Page {page} of ");
        canvas.text_right(Font::Mono, 8.0, PAGE_COUNT_X, FOOTER_Y, label.as_bytes());
        canvas
            .graphics()
            .save_state()
            .transform([1.0, 0.0, 0.0, 1.0, PAGE_COUNT_X, FOOTER_Y])
            .x_object(PAGE_COUNT_NAME)
            .restore_state()
            .set_fill_gray(0.0);
    }

    /// The closing rows of the table: the count and the amount, with and
    /// without cancelled orders, then the count of each status.
    fn draw_totals(&self, canvas: &mut Canvas, y: f32, totals: &Totals) {
        canvas.line(0.6, 0.0, (LEFT, y + 9.0), (RIGHT, y + 9.0));
        let (kept, kept_amount) = totals.not_cancelled();
        let rows = [
            ("Total", totals.orders, totals.amount_cents),
            ("Not cancelled", kept, kept_amount),
        ];
        for (i, (label, orders, cents)) in rows.into_iter().enumerate() {
            let y = y - ROW_HEIGHT * i as f32;
            canvas.text(Font::MonoBold, DATA_SIZE, ORDER_X, y, label.as_bytes());
            let orders = format!("{} orders", grouped(orders));
            canvas.text(Font::MonoBold, DATA_SIZE, CREATED_X, y, orders.as_bytes());
            let mut amount = Vec::new();
            write_money(cents, &mut amount);
            canvas.text_right(Font::MonoBold, DATA_SIZE, RIGHT, y, &amount);
        }
        let by_status = OrderStatus::ALL
            .iter()
            .map(|s| format!("{} {}", s.as_str(), grouped(totals.with_status(*s))))
            .collect::<Vec<_>>()
            .join("   ");
        canvas.text(
            Font::Mono,
            DATA_SIZE,
            ORDER_X,
            y - 2.0 * ROW_HEIGHT,
            by_status.as_bytes(),
        );
    }

    /// The first page: what the report is, its totals and the chart.
    fn summary(&self, totals: &Totals) -> Vec<u8> {
        let mut canvas = Canvas::new();
        let h = &self.heading;
        canvas.text(Font::Bold, 24.0, LEFT, 790.0, b"Orders report");
        canvas.text(
            Font::Sans,
            16.0,
            LEFT,
            764.0,
            h.month.long_name().as_bytes(),
        );
        let about = [
            ("Tenant", self.tenant().to_owned()),
            ("Report", h.name.clone()),
            ("Generated", generated_text(h.generated)),
        ];
        for (i, (label, value)) in about.iter().enumerate() {
            let y = 738.0 - 14.0 * i as f32;
            canvas.text(Font::Bold, 10.0, LEFT, y, label.as_bytes());
            canvas.text(Font::Sans, 10.0, LEFT + 70.0, y, &win_ansi_owned(value));
        }

        let currency = &self.heading.currency;
        let title = format!("Totals (amounts in {currency})");
        canvas.text(Font::Bold, 13.0, LEFT, 676.0, title.as_bytes());
        let money = |cents: i64| {
            let mut text = Vec::new();
            write_money(cents, &mut text);
            text
        };
        let average = |cents: i64, orders: i64| match cents.checked_div(orders) {
            Some(each) => money(each),
            None => b"-".to_vec(),
        };
        let (kept, kept_amount) = totals.not_cancelled();
        let rows = [
            ("Orders", grouped(totals.orders).into_bytes()),
            ("Amount", money(totals.amount_cents)),
            ("Not cancelled", grouped(kept).into_bytes()),
            ("Their amount", money(kept_amount)),
            ("Average order", average(kept_amount, kept)),
        ];
        for (i, (label, value)) in rows.iter().enumerate() {
            let y = 656.0 - 16.0 * i as f32;
            canvas.text(Font::Sans, 10.0, LEFT, y, label.as_bytes());
            canvas.text_right(Font::Mono, 10.0, 250.0, y, value);
        }

        canvas.text(Font::Bold, 13.0, 280.0, 676.0, b"By status");
        for (i, status) in OrderStatus::ALL.into_iter().enumerate() {
            let y = 656.0 - 16.0 * i as f32;
            let count = totals.with_status(status);
            canvas.text(Font::Sans, 10.0, 280.0, y, status.as_str().as_bytes());
            canvas.text_right(Font::Mono, 10.0, 390.0, y, grouped(count).as_bytes());
            let share = if totals.orders > 0 {
                format!("{:.1}%", count as f64 * 100.0 / totals.orders as f64)
            } else {
                "-".to_owned()
            };
            canvas.text_right(Font::Mono, 10.0, 440.0, y, share.as_bytes());
            canvas.text_right(
                Font::Mono,
                10.0,
                RIGHT,
                y,
                &money(totals.amount_with_status(status)),
            );
        }

        self.chart(&mut canvas);
        self.footer(&mut canvas, 1);
        canvas.finish()
    }

    /// Orders per day as bars against the left axis, and the amount per
    /// day as a line against the right one.
    fn chart(&self, canvas: &mut Canvas) {
        const BOTTOM: f32 = 110.0;
        const TOP: f32 = 520.0;
        const X0: f32 = 80.0;
        const X1: f32 = 505.0;
        const ORDERS: (f32, f32, f32) = (0.30, 0.50, 0.78);
        const AMOUNT: (f32, f32, f32) = (0.90, 0.45, 0.10);

        canvas.text(Font::Bold, 13.0, LEFT, 566.0, b"Orders and amount per day");
        let legend_y = 546.0;
        canvas
            .graphics()
            .set_fill_rgb(ORDERS.0, ORDERS.1, ORDERS.2)
            .rect(X0, legend_y - 1.0, 8.0, 8.0)
            .fill_nonzero()
            .set_fill_gray(0.0);
        canvas.text(Font::Sans, 9.0, X0 + 12.0, legend_y, b"Orders (left axis)");
        canvas
            .graphics()
            .set_stroke_rgb(AMOUNT.0, AMOUNT.1, AMOUNT.2)
            .set_line_width(1.5)
            .move_to(X0 + 130.0, legend_y + 3.0)
            .line_to(X0 + 146.0, legend_y + 3.0)
            .stroke();
        canvas.text(
            Font::Sans,
            9.0,
            X0 + 150.0,
            legend_y,
            b"Amount (right axis)",
        );

        let most_orders = self.days.iter().map(|d| d.orders).max().unwrap_or(0);
        let most_amount = self.days.iter().map(|d| d.amount_cents).max().unwrap_or(0);
        // Both axes share the grid: the amount axis takes as many steps as
        // the orders axis.
        let (orders_top, orders_step) = axis(most_orders as f64, true);
        let steps = (orders_top / orders_step).round().max(1.0);
        let amount_step = nice_step(most_amount as f64 / 100.0 / steps);
        let amount_top = amount_step * steps;
        let height = TOP - BOTTOM;
        for i in 0..=steps as usize {
            let y = BOTTOM + height * i as f32 / steps as f32;
            canvas.line(0.4, 0.85, (X0, y), (X1, y));
            let left = axis_label(orders_step * i as f64);
            canvas.text_right(Font::Mono, 7.0, X0 - 4.0, y - 2.5, left.as_bytes());
            let right = axis_label(amount_step * i as f64);
            canvas.text(Font::Mono, 7.0, X1 + 4.0, y - 2.5, right.as_bytes());
        }
        canvas.line(0.8, 0.0, (X0, BOTTOM), (X1, BOTTOM));

        let slot = (X1 - X0) / self.days.len() as f32;
        let center = |day: usize| X0 + slot * (day as f32 + 0.5);
        let graphics = canvas.graphics();
        graphics.set_fill_rgb(ORDERS.0, ORDERS.1, ORDERS.2);
        for (day, totals) in self.days.iter().enumerate() {
            if totals.orders > 0 {
                let bar = height * (totals.orders as f64 / orders_top) as f32;
                graphics.rect(center(day) - slot * 0.35, BOTTOM, slot * 0.7, bar);
            }
        }
        graphics.fill_nonzero();
        if most_amount > 0 {
            let y = |day: usize| {
                BOTTOM + height * (self.days[day].amount_cents as f64 / 100.0 / amount_top) as f32
            };
            graphics
                .set_stroke_rgb(AMOUNT.0, AMOUNT.1, AMOUNT.2)
                .set_line_width(1.5)
                .move_to(center(0), y(0));
            for day in 1..self.days.len() {
                graphics.line_to(center(day), y(day));
            }
            graphics.stroke();
            graphics.set_fill_rgb(AMOUNT.0, AMOUNT.1, AMOUNT.2);
            for day in 0..self.days.len() {
                graphics.rect(center(day) - 1.5, y(day) - 1.5, 3.0, 3.0);
            }
            graphics.fill_nonzero();
        }
        graphics.set_fill_gray(0.0);
        for day in 0..self.days.len() {
            let label = (day + 1).to_string();
            let x = center(day) - label.len() as f32 * MONO_ADVANCE * 6.0 / 2.0;
            canvas.text(Font::Mono, 6.0, x, BOTTOM - 10.0, label.as_bytes());
        }
        canvas.text(
            Font::Sans,
            8.0,
            X0,
            BOTTOM - 24.0,
            b"Day of the month (UTC)",
        );
        if most_orders == 0 {
            let y = BOTTOM + height / 2.0;
            canvas.text(Font::Sans, 11.0, X0 + 150.0, y, &self.no_orders());
        }
    }

    /// The page count, drawn by every footer; known only now.
    fn page_count(&mut self, out: &mut impl Write, pages: i32) -> io::Result<()> {
        let mut content = Content::new();
        content
            .begin_text()
            .set_font(Font::Mono.resource(), 8.0)
            .show(Str(pages.to_string().as_bytes()))
            .end_text();
        let content = content.finish().into_vec();
        self.object(out, PAGE_COUNT, |chunk| {
            let mut form = chunk.form_xobject(PAGE_COUNT, &content);
            form.bbox(Rect::new(0.0, -3.0, 60.0, 9.0));
            form.resources()
                .fonts()
                .pair(Font::Mono.resource(), Font::Mono.object());
        })
    }

    /// Writes one object, made by `write` in a chunk of its own, noting
    /// where it starts.
    fn object(
        &mut self,
        out: &mut impl Write,
        id: Ref,
        write: impl FnOnce(&mut Chunk),
    ) -> io::Result<()> {
        let mut chunk = Chunk::new();
        write(&mut chunk);
        debug_assert_eq!(chunk.refs().collect::<Vec<_>>(), [id]);
        let number = id.get() as usize;
        if self.offsets.len() <= number {
            self.offsets.resize(number + 1, 0);
        }
        self.offsets[number] = self.position;
        self.emit(out, chunk.as_bytes())
    }

    /// Writes a compressed content stream.
    fn stream_object(&mut self, out: &mut impl Write, id: Ref, data: &[u8]) -> io::Result<()> {
        let packed = miniz_oxide::deflate::compress_to_vec_zlib(data, COMPRESSION);
        self.object(out, id, |chunk| {
            chunk.stream(id, &packed).filter(Filter::FlateDecode);
        })
    }

    /// The cross-reference table (where each object starts) and the
    /// trailer that points at it and at the catalog.
    fn cross_reference(&mut self, out: &mut impl Write) -> io::Result<()> {
        let start = self.position;
        let mut table = Vec::with_capacity(64 + 20 * self.offsets.len());
        write!(table, "xref\n0 {}\n", self.offsets.len())?;
        table.extend_from_slice(b"0000000000 65535 f\r\n");
        for offset in &self.offsets[1..] {
            debug_assert!(*offset > 0, "every object number is used");
            write!(table, "{offset:010} 00000 n\r\n")?;
        }
        write!(
            table,
            "trailer\n<< /Size {} /Root {} 0 R /Info {} 0 R >>\nstartxref\n{start}\n%%EOF\n",
            self.offsets.len(),
            CATALOG.get(),
            INFO.get()
        )?;
        self.emit(out, &table)
    }

    fn emit(&mut self, out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
        out.write_all(bytes)?;
        self.position += bytes.len() as u64;
        Ok(())
    }
}

fn row_y(row: usize) -> f32 {
    FIRST_ROW - row as f32 * ROW_HEIGHT
}

/// Appends `text` to `out` (cleared first) in WinAnsi, at most `max`
/// characters, the last an ellipsis when cut; characters WinAnsi lacks
/// become '?'.
fn win_ansi(text: &str, max: usize, out: &mut Vec<u8>) {
    out.clear();
    let cut = text.chars().nth(max).is_some();
    let keep = if cut { max.saturating_sub(1) } else { max };
    out.extend(text.chars().take(keep).map(win_ansi_byte));
    if cut {
        out.push(0x85);
    }
}

fn win_ansi_owned(text: &str) -> Vec<u8> {
    text.chars().map(win_ansi_byte).collect()
}

fn win_ansi_byte(c: char) -> u8 {
    match c {
        ' '..='~' | '\u{a0}'..='\u{ff}' => c as u8,
        '\u{2013}' => 0x96,
        '\u{2014}' => 0x97,
        '\u{2018}' => 0x91,
        '\u{2019}' => 0x92,
        '\u{201c}' => 0x93,
        '\u{201d}' => 0x94,
        '\u{2022}' => 0x95,
        '\u{2026}' => 0x85,
        '\u{20ac}' => 0x80,
        _ => b'?',
    }
}

/// "2024-03-05 10:00:00".
fn write_time(micros: i64, out: &mut Vec<u8>) -> io::Result<()> {
    let t = OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    write!(
        out,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn generated_text(t: OffsetDateTime) -> String {
    let mut out = Vec::new();
    let _ = write_time(t.unix_timestamp() * 1_000_000, &mut out);
    format!("{} UTC", String::from_utf8_lossy(&out))
}

fn pdf_date(t: OffsetDateTime) -> Date {
    Date::new(t.year().clamp(0, 9999) as u16)
        .month(u8::from(t.month()))
        .day(t.day())
        .hour(t.hour())
        .minute(t.minute())
        .second(t.second())
        .utc_offset_hour(0)
        .utc_offset_minute(0)
}

/// 1234567 as "1,234,567".
fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// Cents as "12,345.67", appended to `out`.
fn write_money(cents: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(grouped(cents / 100).as_bytes());
    let _ = write!(out, ".{:02}", (cents % 100).unsigned_abs());
}

/// The smallest of 1, 2, 2.5 and 5 times a power of ten that is at least
/// `raw`; 1 for nothing.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A round top for an axis at or above `max`, and its step, in five steps
/// or fewer. Counts step by whole numbers.
fn axis(max: f64, whole: bool) -> (f64, f64) {
    if max <= 0.0 {
        return (5.0, 1.0);
    }
    let mut step = nice_step(max / 5.0);
    if whole {
        step = step.max(1.0).round();
    }
    (step * (max / step).ceil(), step)
}

fn axis_label(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        grouped(value as i64)
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1234567), "1,234,567");
        let mut out = Vec::new();
        write_money(123456789, &mut out);
        assert_eq!(out, b"1,234,567.89");
        out.clear();
        write_money(5, &mut out);
        assert_eq!(out, b"0.05");
    }

    #[test]
    fn axes_are_round_and_cover_the_largest_value() {
        assert_eq!(axis(0.0, true), (5.0, 1.0));
        assert_eq!(axis(3.0, true), (3.0, 1.0));
        assert_eq!(axis(47.0, true), (50.0, 10.0));
        assert_eq!(axis(1234.0, false), (1250.0, 250.0));
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(nice_step(1_300_000.0), 2_000_000.0);
        for max in [1.0, 7.0, 99.0, 12_345.0, 9_999_999.0] {
            let (top, step) = axis(max, true);
            assert!(
                top >= max && top / step <= 5.0 + 1e-9,
                "{max}: {top} {step}"
            );
        }
    }

    #[test]
    fn long_or_foreign_text_is_cut_and_replaced() {
        let mut out = Vec::new();
        win_ansi("abcdef", 4, &mut out);
        assert_eq!(out, b"abc\x85");
        win_ansi("abcd", 4, &mut out);
        assert_eq!(out, b"abcd");
        win_ansi("caf\u{e9} \u{65e5}", 10, &mut out);
        assert_eq!(out, b"caf\xe9 ?");
    }
}
