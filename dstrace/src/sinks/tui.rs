//! The full-screen view of `dstrace run` on a terminal: the board
//! ([`crate::model::board`]) as a tree, mount -> lock -> blocking function, with the
//! tasks, the chain of each group and the advice; keys to move, sort, expand a group
//! to its tasks and stacks, filter, pause, show the help (`?`), and quit.
//!
//! It is read at 3 a.m. on whatever terminal is at hand, so the stuck come first:
//! the groups with a task in D now, before the finished waits, which fold into one
//! line (`f` shows them). Nothing that matters is cut: chains, advice and rows wrap
//! to the width ([`crate::sinks::tree::wrap`]), the column header stays while the
//! groups scroll, and the status line keeps the tasks in D and the drops, leaving
//! out what does not fit after them ([`fit`]). `Esc` never quits.
//!
//! The terminal is the one thing a crash must not leave broken: raw mode and the
//! alternate screen are undone by [`Tui`]'s `Drop` and by a panic hook, whatever
//! ends the run (`q`, Ctrl-C, SIGTERM, `--duration`, an error).

use std::{
    collections::HashSet,
    io::{self, Stdout},
    sync::Once,
};

use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph},
    Terminal,
};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    clock::human_duration,
    escape::{controls, escape},
    model::board::{sort_groups, BoardGroup, GroupKey, SortBy},
    sinks::tree::{self, chain_text, wrap},
};

/// Kernel frames shown per stack of an expanded group.
const STACK_FRAMES: usize = 12;
/// Tasks listed per expanded group.
const EXPANDED_TASKS: usize = 50;
/// Lines the groups keep at least, whatever the advice takes.
const MIN_BODY: usize = 6;
/// The width of the numbers in front of each row (`IN D`, `OLDEST`, `BLOCKED`,
/// `DONE`).
const NUMBERS: usize = 31;

/// What one screen shows beside the groups.
pub struct Screen<'a> {
    /// The groups, in board order.
    pub groups: Vec<BoardGroup>,
    /// The parts of the first line, the most needed first (tasks in D, drops,
    /// ...): those that do not fit the width are left out, the first two never.
    pub status: &'a [String],
    /// Advice lines.
    pub advice: &'a [String],
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// End the run.
    Quit,
    /// Draw again (the selection, filter or expansion changed).
    Redraw,
    /// Build the groups again (the order changed), then draw.
    Regroup,
    /// Nothing.
    Nothing,
}

/// The full-screen view; dropping it restores the terminal.
pub struct Tui {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    /// Index of the selected group among those shown.
    selected: usize,
    expanded: HashSet<GroupKey>,
    sort: SortBy,
    filter: String,
    editing_filter: bool,
    /// Whether the groups of finished waits (nothing in D now) are shown, or
    /// folded into one line.
    finished: bool,
    /// Whether the help is shown over the groups.
    help: bool,
    /// While paused: the groups and advice of the moment `p` was pressed.
    frozen: Option<(Vec<BoardGroup>, Vec<String>)>,
    paused: bool,
    /// The keys of the groups last drawn, in order (what the selection indexes).
    shown: Vec<GroupKey>,
    /// The line of each group last drawn, in the body.
    group_lines: Vec<usize>,
    /// The first line of the body shown, and the height of the body.
    offset: usize,
    page: usize,
}

impl Tui {
    /// Takes over the terminal: raw mode, alternate screen, no cursor.
    pub fn start() -> io::Result<Tui> {
        install_panic_hook();
        terminal::enable_raw_mode()?;
        let mut stdout = io::stdout();
        if let Err(err) = execute!(stdout, EnterAlternateScreen, cursor::Hide) {
            restore();
            return Err(err);
        }
        let terminal = match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(terminal) => terminal,
            Err(err) => {
                restore();
                return Err(err);
            }
        };
        Ok(Tui {
            terminal,
            selected: 0,
            expanded: HashSet::new(),
            sort: SortBy::default(),
            filter: String::new(),
            editing_filter: false,
            finished: false,
            help: false,
            frozen: None,
            paused: false,
            shown: Vec::new(),
            group_lines: Vec::new(),
            offset: 0,
            page: 1,
        })
    }

    /// The order asked for.
    pub fn sort(&self) -> SortBy {
        self.sort
    }

    /// Draws a screen (while paused, the groups and advice of the moment of the
    /// pause, with the status of now).
    pub fn draw(&mut self, screen: Screen<'_>) -> io::Result<()> {
        let (all, advice) = if self.paused {
            self.frozen.get_or_insert_with(|| (screen.groups, screen.advice.to_vec())).clone()
        } else {
            self.frozen = None;
            (screen.groups, screen.advice.to_vec())
        };
        let filter = self.filter.to_lowercase();
        let (stuck, finished): (Vec<BoardGroup>, Vec<BoardGroup>) = all
            .into_iter()
            .filter(|group| matches(group, &filter))
            .partition(|group| !group.tasks.is_empty());
        let stuck_count = stuck.len();
        let finished_count = finished.len();
        let mut groups = stuck;
        if self.finished {
            groups.extend(finished);
        }
        // Keep the selection on the same group when the order changes.
        let previous = self.shown.get(self.selected).cloned();
        self.shown = groups.iter().map(|group| group.key.clone()).collect();
        if let Some(previous) = previous {
            if let Some(index) = self.shown.iter().position(|key| *key == previous) {
                self.selected = index;
            }
        }
        self.selected = self.selected.min(self.shown.len().saturating_sub(1));

        let size = self.terminal.size()?;
        let (width, height) = (usize::from(size.width), usize::from(size.height));
        let lines = self.body(&groups, stuck_count, finished_count, width);
        let footer = self.footer(width);
        let mut parts: Vec<String> = screen.status.iter().map(|part| escape(part)).collect();
        let mut keep = 2;
        if self.paused {
            parts.insert(0, "PAUSED (p resumes)".to_owned());
            keep += 1;
        }
        // The parts that must stay go to a second line rather than be cut.
        let status: Vec<Line<'_>> = fit(&parts, keep, "  ", width.saturating_sub(1))
            .into_iter()
            .map(|line| Line::from(format!(" {line:w$}", w = width.saturating_sub(1))).bold().reversed())
            .collect();
        let status_height = status.len();
        // The first group (the most stuck) keeps its rows and chain whole and the
        // first advice item stays whole; the advice has what the groups leave.
        let room = height.saturating_sub(2 + status_height);
        let first_item =
            advice.first().map_or(0, |line| wrap(&format!("* {}", controls(line)), width, 0, 2).len());
        let first_group =
            if stuck_count > 0 { self.group_lines.get(1).copied().unwrap_or(lines.len()) } else { 0 };
        let body_keeps = first_group.min(room.saturating_sub(first_item)).max(MIN_BODY);
        let advice = advice_lines(&advice, width, room.saturating_sub(body_keeps));
        let header = Line::from(format!(
            "{:>5} {:>8} {:>8} {:>6} MOUNT / LOCK / BLOCKED IN",
            "IN D", "OLDEST", "BLOCKED", "DONE"
        ))
        .bold();

        // Scroll so that the selected group stays in view, with a line of what follows.
        let body_height = height.saturating_sub(2 + status_height + advice.len()).max(1);
        self.page = body_height;
        if self.offset == usize::MAX {
            // `G`: the end of the groups at the bottom.
            self.offset = lines.len().saturating_sub(body_height);
        }
        match self.group_lines.get(self.selected) {
            Some(&line) => {
                if line < self.offset {
                    self.offset = line.saturating_sub(2);
                }
                if line + 2 > self.offset + body_height {
                    self.offset = (line + 2).saturating_sub(body_height);
                }
            }
            None => self.offset = 0,
        }
        self.offset = self.offset.min(lines.len().saturating_sub(body_height));
        let offset = u16::try_from(self.offset).unwrap_or(u16::MAX);
        let help = self.help;
        self.terminal.draw(|frame| {
            let [top, head, body, advice_area, bottom] = Layout::vertical([
                Constraint::Length(u16::try_from(status_height).unwrap_or(u16::MAX)),
                Constraint::Length(1),
                Constraint::Min(1),
                Constraint::Length(u16::try_from(advice.len()).unwrap_or(u16::MAX)),
                Constraint::Length(1),
            ])
            .areas(frame.area());
            frame.render_widget(Paragraph::new(status), top);
            frame.render_widget(Paragraph::new(header), head);
            frame.render_widget(Paragraph::new(lines).scroll((offset, 0)), body);
            frame.render_widget(Paragraph::new(advice), advice_area);
            frame.render_widget(Paragraph::new(footer), bottom);
            if help {
                let area = frame.area();
                let lines: Vec<Line<'_>> = HELP.iter().map(|line| Line::from(*line)).collect();
                let w =
                    (HELP.iter().map(|line| line.len()).max().unwrap_or(0) + 4).min(usize::from(area.width));
                let h = (HELP.len() + 2).min(usize::from(area.height));
                let rect = ratatui::layout::Rect {
                    x: area.x + (area.width.saturating_sub(w as u16)) / 2,
                    y: area.y + (area.height.saturating_sub(h as u16)) / 2,
                    width: w as u16,
                    height: h as u16,
                };
                frame.render_widget(Clear, rect);
                frame.render_widget(
                    Paragraph::new(lines).block(Block::bordered().title(" keys (Esc closes) ")),
                    rect,
                );
            }
        })?;
        Ok(())
    }

    /// The lines of the groups (the stuck ones, then, when shown, the finished
    /// ones, or a line that says how many they are); records the line of each group.
    fn body(
        &mut self,
        groups: &[BoardGroup],
        stuck: usize,
        finished: usize,
        width: usize,
    ) -> Vec<Line<'static>> {
        let mut lines = Vec::new();
        self.group_lines.clear();
        if stuck == 0 && finished == 0 {
            let text = if self.filter.is_empty() {
                "No task in D, and no D wait of at least --min-duration yet."
            } else {
                "No group matches the filter (Esc clears it)."
            };
            lines.push(Line::from(text).italic());
            return lines;
        }
        if stuck == 0 {
            lines.push(Line::from("No task in D now.").italic());
        }
        self.rows(&mut lines, groups, 0..stuck, width);
        if finished > 0 {
            if self.finished {
                lines.push(
                    Line::from(format!(
                        "-- {} of finished waits, nothing in D now (f hides them) --",
                        groups_of(finished)
                    ))
                    .italic(),
                );
                self.rows(&mut lines, groups, stuck..groups.len(), width);
            } else {
                let text =
                    format!("{} of finished waits, nothing in D now: f shows them", groups_of(finished));
                lines.extend(wrap(&text, width, 0, 2).into_iter().map(|line| Line::from(line).italic()));
            }
        }
        lines
    }

    /// The rows of `groups[range]` as a tree, with their chains and, expanded,
    /// their tasks and stacks.
    fn rows(
        &mut self,
        lines: &mut Vec<Line<'static>>,
        groups: &[BoardGroup],
        range: std::ops::Range<usize>,
        width: usize,
    ) {
        let first = range.start;
        let part = &groups[range];
        let column = width.saturating_sub(NUMBERS);
        for row in tree::rows(part) {
            let indent = 2 * row.depth;
            let oldest =
                if row.in_d > 0 { format!("{}+", human_duration(row.oldest_ns)) } else { "-".into() };
            let numbers = format!(
                "{:>5} {:>8} {:>8} {:>6} ",
                row.in_d,
                oldest,
                human_duration(row.blocked_ns),
                row.done
            );
            let severity = if row.in_d > 0 { severity(row.oldest_ns) } else { Style::default() };
            let index = row.group.map(|index| index + first);
            let (label_style, detail_style, marker) = match index {
                None if row.depth == 0 => (Style::default().bold().cyan(), Style::default(), String::new()),
                None => (Style::default().yellow(), Style::default(), String::new()),
                Some(index) => {
                    let style = if index == self.selected {
                        Style::default().add_modifier(Modifier::REVERSED)
                    } else {
                        Style::default()
                    };
                    let marker = if self.expanded.contains(&groups[index].key) { " -" } else { " +" };
                    (style.add_modifier(Modifier::BOLD), style, marker.to_owned())
                }
            };
            if index.is_some() {
                self.group_lines.push(lines.len());
            }
            // The label (with its marker) and the detail, wrapped in their column.
            let label = format!("{}{marker}", escape(&row.label));
            let text = format!("{label}  {}", escape(&row.detail));
            let wrapped = wrap(text.trim_end(), column, indent, indent + 4);
            let label_len = indent + label.chars().count();
            for (n, piece) in wrapped.into_iter().enumerate() {
                let front = if n == 0 {
                    Span::styled(numbers.clone(), severity)
                } else {
                    Span::raw(" ".repeat(NUMBERS.min(width)))
                };
                if n == 0 && piece.chars().count() > label_len {
                    let (head, tail): (String, String) = {
                        let chars: Vec<char> = piece.chars().collect();
                        (chars[..label_len].iter().collect(), chars[label_len..].iter().collect())
                    };
                    lines.push(Line::from(vec![
                        front,
                        Span::styled(head, label_style),
                        Span::styled(tail, detail_style),
                    ]));
                } else {
                    let style = if n == 0 { label_style } else { detail_style };
                    lines.push(Line::from(vec![front, Span::styled(piece, style)]));
                }
            }
            let Some(index) = index else { continue };
            let group = &groups[index];
            let pad = 2 + indent;
            if let Some(links) = group.chain() {
                let text = format!("chain: {}", escape(&chain_text(links)));
                lines.extend(wrap(&text, width, pad, pad + 4).into_iter().map(Line::from));
            }
            if self.expanded.contains(&group.key) {
                lines.extend(expanded(group, pad + 2, width));
            }
        }
    }

    fn footer(&self, width: usize) -> Line<'static> {
        if self.editing_filter {
            return Line::from(format!(
                "filter: {}_   (Enter: keep, Esc: clear; matches mount, type, source, lock, function, command)",
                escape(&self.filter)
            ))
            .reversed();
        }
        let mut parts = Vec::new();
        if !self.filter.is_empty() {
            parts.push(format!("[filter: {}, Esc clears]", escape(&self.filter)));
        }
        parts.extend(
            [
                "q quit",
                "? help",
                "/ filter",
                if self.finished { "f hide finished" } else { "f show finished" },
                if self.paused { "p resume" } else { "p pause" },
                "Enter expand",
                "\u{2191}\u{2193} PgUp PgDn move",
                "e expand all",
            ]
            .map(str::to_owned),
        );
        parts.insert(
            parts.len().min(if self.filter.is_empty() { 4 } else { 5 }),
            format!("s sort ({})", self.sort.name()),
        );
        Line::from(fit(&parts, 1, "  ", width).swap_remove(0)).reversed()
    }

    /// Handles a key.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Nothing;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && matches!(key.code, KeyCode::Char('c' | 'd')) {
            return Action::Quit;
        }
        if self.editing_filter {
            match key.code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() => self.filter.push(c),
                _ => return Action::Nothing,
            }
            return Action::Redraw;
        }
        if self.help {
            // Any key closes the help; `q` quits too.
            self.help = false;
            return if key.code == KeyCode::Char('q') { Action::Quit } else { Action::Redraw };
        }
        match key.code {
            KeyCode::Null => Action::Redraw,
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Char('?') | KeyCode::F(1) => {
                self.help = true;
                Action::Redraw
            }
            KeyCode::Esc => {
                // Never quits: a stray Escape at 3 a.m. must not end the diagnosis.
                if self.filter.is_empty() {
                    return Action::Nothing;
                }
                self.filter.clear();
                Action::Redraw
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected = self.selected.saturating_sub(1);
                Action::Redraw
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(self.shown.len().saturating_sub(1));
                Action::Redraw
            }
            KeyCode::PageDown | KeyCode::PageUp => {
                let down = key.code == KeyCode::PageDown;
                let page = self.page.saturating_sub(1).max(1);
                self.offset = if down { self.offset + page } else { self.offset.saturating_sub(page) };
                self.selected = page_from(&self.group_lines, self.selected, page, down);
                Action::Redraw
            }
            KeyCode::Home | KeyCode::Char('g') => {
                self.selected = 0;
                self.offset = 0;
                Action::Redraw
            }
            KeyCode::End | KeyCode::Char('G') => {
                self.selected = self.shown.len().saturating_sub(1);
                self.offset = usize::MAX;
                Action::Redraw
            }
            KeyCode::Enter | KeyCode::Char(' ') => {
                if let Some(key) = self.shown.get(self.selected) {
                    if !self.expanded.remove(key) {
                        self.expanded.insert(key.clone());
                    }
                }
                Action::Redraw
            }
            KeyCode::Char('e') => {
                if self.expanded.len() >= self.shown.len() {
                    self.expanded.clear();
                } else {
                    self.expanded.extend(self.shown.iter().cloned());
                }
                Action::Redraw
            }
            KeyCode::Char('f') => {
                self.finished = !self.finished;
                Action::Redraw
            }
            KeyCode::Char('p') => {
                self.paused = !self.paused;
                Action::Redraw
            }
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                if let Some((groups, _)) = &mut self.frozen {
                    sort_groups(groups, self.sort);
                }
                Action::Regroup
            }
            KeyCode::Char('/') => {
                self.editing_filter = true;
                Action::Redraw
            }
            _ => Action::Nothing,
        }
    }
}

/// The group a page down (or up) from `selected`, given the line of each group:
/// the last one within a page below (the first within a page above), and at
/// least the next (previous) one.
fn page_from(group_lines: &[usize], selected: usize, page: usize, down: bool) -> usize {
    let Some(&line) = group_lines.get(selected) else { return 0 };
    let last = group_lines.len().saturating_sub(1);
    if down {
        let within = group_lines.iter().rposition(|&l| l <= line + page).unwrap_or(selected);
        within.max(selected + 1).min(last)
    } else {
        let within = group_lines.iter().position(|&l| l + page >= line).unwrap_or(selected);
        within.min(selected.saturating_sub(1))
    }
}

/// The help shown by `?`: every key.
const HELP: &[&str] = &[
    "?, F1          this help (any key closes it)",
    "q, Ctrl-C      quit (the summary follows on the normal screen)",
    "Up/Down, k/j   select the group above / below",
    "PgUp/PgDn      a page up / down",
    "g/G, Home/End  the first / last group",
    "Enter, Space   expand the group to its tasks and stacks (again: fold)",
    "e              expand all groups (again: fold all)",
    "f              show / hide the groups of finished waits (nothing in D)",
    "s              sort by tasks in D, oldest wait, blocked time",
    "/              filter: mount, type, source, lock, holder, function,",
    "               command; Enter keeps it, Esc clears it",
    "Esc            clear the filter (never quits)",
    "p              pause / resume (the groups stop changing)",
    "",
    "Groups with a task in D come first; the colour of the numbers is the",
    "age of the oldest wait: yellow from 1s, red from 10s.",
];

/// The style of a row's numbers by the age of its oldest wait: yellow from a
/// second, red from ten (colours go with NO_COLOR: crossterm leaves them out).
fn severity(oldest_ns: u64) -> Style {
    match oldest_ns {
        10_000_000_000.. => Style::default().red().bold(),
        1_000_000_000.. => Style::default().yellow(),
        _ => Style::default(),
    }
}

/// `1 group`, `3 groups`.
fn groups_of(n: usize) -> String {
    if n == 1 {
        "1 group".to_owned()
    } else {
        format!("{n} groups")
    }
}

/// The advice wrapped to the width, at most `max` lines; a last line says when
/// some did not fit.
fn advice_lines(advice: &[String], width: usize, max: usize) -> Vec<Line<'static>> {
    let mut lines: Vec<String> =
        advice.iter().flat_map(|line| wrap(&format!("* {}", controls(line)), width, 0, 2)).collect();
    if lines.len() > max {
        let more = lines.len() + 1 - max;
        lines.truncate(max.saturating_sub(1));
        if max > 0 {
            lines.push(format!("(and {more} more lines of advice: the summary at the end has them)"));
        }
    }
    lines.into_iter().map(|line| Line::from(line).yellow()).collect()
}

/// The parts joined by `separator` into lines of `width`: the first `keep`
/// always (on a line of their own when they do not fit the line so far, wrapped
/// when longer than a line), each other one when it fits the last line (a long
/// one left out lets a shorter one after it in), in their order.
pub fn fit(parts: &[String], keep: usize, separator: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for (n, part) in parts.iter().enumerate() {
        let Some(line) = lines.last_mut() else { continue };
        let len = line.chars().count();
        let extra = part.chars().count() + if len == 0 { 0 } else { separator.chars().count() };
        if len + extra <= width {
            if len > 0 {
                line.push_str(separator);
            }
            line.push_str(part);
        } else if n < keep {
            if len == 0 {
                lines.pop();
            }
            lines.extend(wrap(part, width, 0, 2));
        }
    }
    lines
}

impl Drop for Tui {
    fn drop(&mut self) {
        restore();
    }
}

/// Whether a group matches a (lower-case) filter: in its mount point, the mount's
/// type and source, its lock and the lock's holder, its function or the command
/// names of its tasks.
fn matches(group: &BoardGroup, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let hit = |text: &str| text.to_lowercase().contains(filter);
    group.key.mount.as_deref().is_some_and(hit)
        || group.mount.as_ref().is_some_and(|mount| hit(&mount.fs_type) || hit(&mount.source))
        || group.key.lock.as_deref().is_some_and(hit)
        || group.lock.as_ref().and_then(|lock| lock.holder.as_ref()).is_some_and(|holder| hit(&holder.comm))
        || hit(&group.key.function)
        || group.tasks.iter().any(|wait| hit(&wait.comm))
}

/// The lines of an expanded group: its tasks, then its distinct stacks.
fn expanded(group: &BoardGroup, pad: usize, width: usize) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let mut push = |text: String, dim: bool| {
        for line in wrap(&text, width, pad, pad + 4) {
            lines.push(if dim { Line::from(line).dim() } else { Line::from(line) });
        }
    };
    for wait in group.tasks.iter().take(EXPANDED_TASKS) {
        let file = wait.on.file.as_ref().and_then(|file| file.path.clone()).unwrap_or_default();
        push(
            format!(
                "{}/{} {} {} {}+ {} {}",
                wait.pid,
                wait.tid,
                escape(&wait.comm),
                wait.state.name(),
                human_duration(wait.duration_ns),
                wait.on.syscall.unwrap_or(""),
                escape(&file),
            ),
            false,
        );
    }
    if group.tasks.len() > EXPANDED_TASKS {
        push(format!("... {} more tasks", group.tasks.len() - EXPANDED_TASKS), false);
    }
    let mut stacks: Vec<(&[String], usize)> = Vec::new();
    for wait in &group.tasks {
        match stacks.iter_mut().find(|(stack, _)| *stack == &wait.stack[..]) {
            Some((_, n)) => *n += 1,
            None => stacks.push((&wait.stack, 1)),
        }
    }
    for (stack, n) in stacks {
        push(format!("stack of {n} task(s):"), true);
        for frame in stack.iter().take(STACK_FRAMES) {
            push(format!("  {}", escape(frame)), true);
        }
    }
    lines
}

/// Leaves raw mode and the alternate screen, shows the cursor. Safe to call more
/// than once.
pub fn restore() {
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    let _ = terminal::disable_raw_mode();
}

/// Restores the terminal before a panic message is printed.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Key presses, read by a thread of their own (reading the terminal blocks).
pub fn keys() -> UnboundedReceiver<KeyEvent> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || loop {
        match event::read() {
            Ok(Event::Key(key)) => {
                if sender.send(key).is_err() {
                    return;
                }
            }
            Ok(_) => {
                // A resize: an empty key asks for a redraw.
                if sender.send(KeyEvent::new(KeyCode::Null, KeyModifiers::NONE)).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    });
    receiver
}

/// Whether the full-screen view can run: standard input and output are terminals.
pub fn available() -> bool {
    use std::io::IsTerminal as _;
    io::stdin().is_terminal() && io::stdout().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|part| (*part).to_owned()).collect()
    }

    #[test]
    fn a_count_of_groups_is_said_in_the_number_it_has() {
        assert_eq!(groups_of(1), "1 group");
        assert_eq!(groups_of(7), "7 groups");
    }

    #[test]
    fn the_filter_matches_the_mounts_type_and_source() {
        use crate::model::board::{tests::wait, Board};
        let groups =
            Board::default().groups(&[wait(2, Some("/mnt/x"), false, "g", true, 1_000)], SortBy::InD);
        for filter in ["fuse", "sshfs", "/mnt/x", "g", ""] {
            assert!(matches(&groups[0], filter), "{filter:?}");
        }
        assert!(!matches(&groups[0], "nfs"));
    }

    #[test]
    fn a_page_moves_by_lines_and_at_least_one_group() {
        let lines = [0, 3, 4, 10, 30, 31];
        assert_eq!(page_from(&lines, 0, 10, true), 3);
        assert_eq!(page_from(&lines, 3, 10, true), 4, "the next group is further than a page");
        assert_eq!(page_from(&lines, 5, 10, true), 5, "the last stays");
        assert_eq!(page_from(&lines, 4, 10, false), 3);
        assert_eq!(page_from(&lines, 3, 10, false), 0);
        assert_eq!(page_from(&lines, 0, 10, false), 0);
        assert_eq!(page_from(&[], 0, 10, true), 0);
    }

    #[test]
    fn the_status_line_keeps_the_tasks_in_d_and_the_drops() {
        let status =
            parts(&["2 tasks in D, the oldest for 4.000s", "drops: none", "tracing for 9.000s", "12:00:00"]);
        assert_eq!(
            fit(&status, 2, "  ", 80),
            ["2 tasks in D, the oldest for 4.000s  drops: none  tracing for 9.000s  12:00:00"]
        );
        // What does not fit is left out, a shorter part after it comes in.
        assert_eq!(fit(&status, 2, "  ", 60), ["2 tasks in D, the oldest for 4.000s  drops: none  12:00:00"]);
        // The parts kept go to a line of their own rather than be cut.
        assert_eq!(
            fit(&status, 2, "  ", 40),
            ["2 tasks in D, the oldest for 4.000s", "drops: none  tracing for 9.000s"]
        );
        let drops = parts(&["no task in D", "drops: stack_lost=3 events_lost=12", "tracing"]);
        assert_eq!(fit(&drops, 2, "  ", 20), ["no task in D", "drops: stack_lost=3", "  events_lost=12"]);
        assert_eq!(fit(&[], 2, "  ", 20), [""], "always a line");
    }
}
