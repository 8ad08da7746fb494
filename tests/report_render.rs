//! The drill's HTML page, rendered by headless Chromium: the picture has
//! what the page promises (the flagged reads in red, every serving region's
//! colour, the fault windows), not a blank or broken page.
//!
//! Chromium is Debian's `chromium` (`/usr/bin/chromium`, or the path in
//! `QUORATE_CHROMIUM`); without it the test is skipped, except in CI, where
//! that is a failure. The picture is left in the target directory
//! (`drill-report.png`); with `QUORATE_UPDATE_SCREENSHOT=1` it also
//! replaces the README's `docs/drill-report.png`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quorate::drill::{html_report, run_all, DrillOptions};

const WIDTH: u32 = 1200;
const SCENARIO: &str = "partial-partition-skew-250ms";

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("QUORATE_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Renders `page` to `png` in a window `height` pixels tall; the browser
/// is stopped by its PID if it takes longer than a minute.
fn render(browser: &Path, page: &Path, png: &Path, profile: &Path, height: u32) {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={WIDTH},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("chromium can be waited for") {
            assert!(status.success(), "chromium exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Picture {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Picture {
    fn read(path: &Path) -> Picture {
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(path).expect("the screenshot exists"),
        ));
        let mut reader = decoder.read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("a sane size")];
        let info = reader.next_frame(&mut buf).expect("one frame");
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("unexpected colour type {other:?}"),
        };
        let rgb = buf[..info.buffer_size()]
            .chunks_exact(channels)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Picture {
            width: info.width as usize,
            height: info.height as usize,
            rgb,
        }
    }

    /// The picture without the blank rows below the page.
    fn cropped(self) -> Picture {
        let used = (0..self.height)
            .rev()
            .find(|&y| {
                self.rgb[y * self.width..(y + 1) * self.width]
                    .iter()
                    .any(|p| *p != [255, 255, 255])
            })
            .map_or(0, |y| y + 1);
        Picture {
            width: self.width,
            height: used,
            rgb: self.rgb[..used * self.width].to_vec(),
        }
    }

    fn count_near(&self, hex: &str) -> usize {
        let c = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap();
        let target = [
            (c >> 16) as i32,
            ((c >> 8) & 0xff) as i32,
            (c & 0xff) as i32,
        ];
        self.rgb
            .iter()
            .filter(|p| {
                p.iter()
                    .zip(target)
                    .all(|(&a, b)| (i32::from(a) - b).abs() <= 12)
            })
            .count()
    }

    fn write(&self, path: &Path) {
        let file = std::fs::File::create(path).expect("the picture can be written");
        let mut encoder = png::Encoder::new(
            std::io::BufWriter::new(file),
            self.width as u32,
            self.height as u32,
        );
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_compression(png::Compression::High);
        let mut writer = encoder.write_header().expect("a header");
        let data: Vec<u8> = self.rgb.iter().flatten().copied().collect();
        writer.write_image_data(&data).expect("the pixels");
    }
}

#[test]
fn the_report_renders_in_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs Chromium (Debian package chromium) to render the drill report"
        );
        eprintln!("skipping: no Chromium (install Debian's chromium or set QUORATE_CHROMIUM)");
        return;
    };
    let results = run_all(&DrillOptions {
        scenario: Some(SCENARIO.into()),
        ..DrillOptions::default()
    })
    .expect("the drill runs");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report_render");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("drill.html");
    std::fs::write(&page, html_report(&results)).unwrap();
    let raw = dir.join("raw.png");
    render(&browser, &page, &raw, &dir.join("profile"), 2400);

    let picture = Picture::read(&raw).cropped();
    assert_eq!(picture.width, WIDTH as usize);
    assert!(
        (900..2390).contains(&picture.height),
        "the page is {} pixels tall: both runs drawn, nothing cut off",
        picture.height
    );
    let inked = picture
        .rgb
        .iter()
        .filter(|p| **p != [255, 255, 255])
        .count();
    let share = inked as f64 / picture.rgb.len() as f64;
    assert!(
        (0.05..0.7).contains(&share),
        "{:.1}% of the picture is drawn",
        share * 100.0
    );
    // The naive run's flagged reads, ringed in red.
    assert!(picture.count_near("#d7263d") > 500, "red rings are drawn");
    // Every serving region's colour (the first three of the palette).
    for colour in ["#1f77b4", "#9467bd", "#17becf"] {
        assert!(picture.count_near(colour) > 200, "{colour} is drawn");
    }
    // The fault windows' shading, blended over white.
    assert!(
        picture.count_near("#fcf0d2") > 50_000,
        "fault windows are shaded"
    );

    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill-report.png");
    picture.write(&out);
    eprintln!("the rendered report: {}", out.display());
    if std::env::var("QUORATE_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        picture.write(&docs.join("drill-report.png"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
