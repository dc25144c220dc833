// Drives the web page in headless Chromium: loads it, checks its method menus and a parameter form
// against GET /v1/models/{model}, uploads an example image, runs saliency,
// Grad-CAM and LIME, channel attribution's top channels with one channel's activation
// maximisation, and RISE as a background job (progress from Server-Sent Events), and checks
// that an overlay appears and the top class is shown; then TreeSHAP's bar chart on the tree model;
// then similar examples, influence and likely mislabels as thumbnails of reference rows; TCAV of a
// concept set and what each layer knows, as charts and tables; then a text model's answer as the
// text with its words highlighted; then a detector's detections as boxes, one clicked to explain
// it, a segmenter's mask as a translucent layer and a tagger's labels over their thresholds; then a
// recorded decision's report.
// Screenshots go to argv[3].
// Usage: node tests/browser/page.mjs BASE_URL SCREENSHOT_DIR IMAGE DETECTOR_IMAGE GRAY_IMAGE
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [base, shots, image, detectorImage, grayImage] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const failures = [];
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
  await page.goto(base, { waitUntil: "networkidle" });
  // The method menu and the parameter forms come from the API: every method a model's answer
  // lists is offered, and a form's inputs start at the schema's defaults, within its bounds.
  for (const name of ["fashion-cnn", "breast-cancer", "keywords"]) {
    const info = await (await fetch(new URL(`v1/models/${name}`, base))).json();
    await page.selectOption("#model", name);
    const offered = await page.evaluate(() => [...document.querySelectorAll("#method option")].map((o) => o.value));
    if (offered.join() !== info.methods.join()) failures.push(`${name}: menu ${offered}, API ${info.methods}`);
    if (name !== "fashion-cnn") continue;
    for (const method of ["integrated-gradients", "smoothgrad"]) {
      await page.selectOption("#method", method);
      const { params: schema, summary } = info.method_details.find((m) => m.name === method);
      const note = await page.innerText("#method-note");
      if (note !== summary) failures.push(`${method}: note ${note}, summary ${summary}`);
      const form = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll("[data-param]")]
        .map((el) => [el.dataset.param, { value: el.type === "checkbox" ? el.checked : el.value, min: el.min, max: el.max }])));
      for (const [param, s] of Object.entries(schema.properties)) {
        const want = s.default === null ? "" : typeof s.default === "boolean" ? s.default : String(s.default);
        const got = form[param];
        if (!got || got.value !== want || (s.minimum !== undefined && got.min !== String(s.minimum))
          || (s.maximum !== undefined && got.max !== String(s.maximum))) {
          failures.push(`${method}.${param}: input ${JSON.stringify(got)}, schema ${JSON.stringify(s)}`);
        }
      }
    }
  }
  await page.selectOption("#model", "fashion-cnn");
  await page.setInputFiles("#file", image);
  for (const method of ["saliency", "grad-cam", "lime"]) {
    await page.selectOption("#method", method);
    await page.click("#explain");
    await page.waitForFunction((m) => !document.getElementById("overlay-figure").hidden
      && document.getElementById("overlay-caption").innerText.startsWith(m), method, { timeout: 20000 });
    await page.waitForFunction(() => document.getElementById("predictions").innerText.includes("Ankle boot"), null, { timeout: 20000 });
    const overlay = await page.evaluate(() => {
      const img = document.getElementById("overlay");
      return { complete: img.complete, width: img.naturalWidth, caption: document.getElementById("overlay-caption").innerText };
    });
    if (!overlay.complete || overlay.width !== 28 || !overlay.caption.startsWith(method)) {
      failures.push(`${method}: overlay ${JSON.stringify(overlay)}`);
    }
    await page.locator("#attributions").scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${shots}/web-page-${method}.png` });
  }
  // Channel attribution: the top channels, each with its map, and on request the image that
  // maximises one of them (activation maximisation, drawn at the model's 28 pixels).
  await page.selectOption("#method", "channel-attribution");
  await page.click("#explain");
  await page.waitForFunction(() => document.querySelectorAll("#channels figure.channel canvas").length === 5, null, { timeout: 30000 });
  const channelFigures = await page.evaluate(() => [...document.querySelectorAll("#channels figure.channel")]
    .map((f) => ({ channel: f.dataset.channel, map: f.querySelector("canvas").width, caption: f.innerText })));
  if (channelFigures.some((f) => !f.caption.includes("IG") || f.map < 1)) failures.push(`channels: ${JSON.stringify(channelFigures)}`);
  await page.click("#channels figure.channel button");
  await page.waitForFunction(() => (document.querySelector("#channels img.actmax")?.naturalWidth || 0) > 0, null, { timeout: 60000 });
  const made = await page.evaluate(() => document.querySelector("#channels img.actmax").naturalWidth);
  if (made !== 28) failures.push(`activation maximisation: image ${made} wide`);
  await page.locator("#attributions").scrollIntoViewIfNeeded();
  await page.screenshot({ path: `${shots}/web-page-channel-attribution.png` });
  // Methods side by side, captioned with their metrics: the choice is the model's attribution
  // methods as the API lists them, a few ticked.
  const fashionInfo = await (await fetch(new URL("v1/models/fashion-cnn", base))).json();
  const comparable = fashionInfo.method_details
    .filter((m) => !m.capabilities.examples && !m.capabilities.decision && !m.capabilities.makes_image)
    .map((m) => m.name);
  const choice = await page.evaluate(() => [...document.querySelectorAll("#compare-methods input")]
    .map((b) => [b.value, b.checked]));
  if (choice.map((c) => c[0]).join() !== comparable.join()) failures.push(`compare: offers ${choice}, API ${comparable}`);
  const ticked = choice.filter((c) => c[1]).length;
  if (ticked < 3 || ticked > 8) failures.push(`compare: ${ticked} methods ticked`);
  await page.click("#compare");
  await page.waitForFunction(() => document.getElementById("overlay-caption").innerText.startsWith("compare"), null, { timeout: 30000 });
  await page.waitForFunction(() => document.getElementById("overlay").naturalWidth > 0, null, { timeout: 10000 });
  const compared = await page.evaluate(() => document.getElementById("overlay").naturalWidth);
  if (compared !== (1 + ticked) * 168) {
    failures.push(`compare: picture ${compared} wide, expected the input and ${ticked} methods`);
  }
  await page.screenshot({ path: `${shots}/web-page-compare.png` });
  // Predict shows how sure the model is beside the classes.
  await page.click("#predict");
  await page.waitForFunction(() => document.getElementById("uncertainty").innerText.includes("mutual information"), null, { timeout: 20000 });
  await page.screenshot({ path: `${shots}/web-page-uncertainty.png` });
  // A background job: the progress bar fills from the job's events, then the overlay appears.
  await page.check("#background");
  await page.selectOption("#method", "rise");
  await page.click("#explain");
  await page.waitForFunction(() => document.getElementById("overlay-caption").innerText.startsWith("rise")
    && document.getElementById("overlay-caption").innerText.includes("background job"), null, { timeout: 60000 });
  const job = await page.evaluate(() => ({ shown: !document.getElementById("job").hidden,
    state: document.getElementById("job-state").innerText, value: document.getElementById("job-progress").value }));
  if (!job.shown || !job.state.startsWith("done") || job.value < 500) failures.push(`job: ${JSON.stringify(job)}`);
  await page.screenshot({ path: `${shots}/web-page-job.png` });
  await page.uncheck("#background");
  // TreeSHAP on the tree model, as a background job: its bar chart.
  await page.selectOption("#model", "breast-cancer-forest");
  await page.selectOption("#method", "tree-shap");
  await page.check("#background");
  await page.click("#explain");
  await page.waitForFunction(() => document.getElementById("overlay-caption").innerText.startsWith("tree-shap"), null, { timeout: 30000 });
  const bars = await page.evaluate(() => document.getElementById("overlay").naturalWidth);
  if (bars !== 720) failures.push(`tree-shap bar chart width ${bars}`);
  await page.screenshot({ path: `${shots}/web-page-tree-shap.png` });
  await page.uncheck("#background");
  // A counterfactual and an anchor on the same model: the decision shown as text.
  for (const [method, heading] of [["counterfactual", "What would change"], ["anchors", "What keeps"]]) {
    await page.selectOption("#method", method);
    await page.click("#explain");
    await page.waitForFunction((h) => (document.querySelector("#attributions .decision h4")?.innerText || "").startsWith(h),
      heading, { timeout: 30000 });
    const items = await page.evaluate(() => document.querySelectorAll("#attributions .decision li").length);
    if (items < 1) failures.push(`${method}: no conditions or changes shown`);
    await page.locator("#attributions").scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${shots}/web-page-${method}.png` });
  }
  await page.selectOption("#model", "fashion-cnn");
  // The reference set: similar examples and influence as thumbnails beside the input, and the
  // likely mislabels as a grid, each with its label and the model's prediction.
  // As many rows as the method's default `k`: the page sends only the parameters the user changed.
  const fashion = await (await fetch(new URL("v1/models/fashion-cnn", base))).json();
  const k = (method) => fashion.method_details.find((m) => m.name === method).defaults.k;
  for (const [method, groups, per] of [["similar-examples", 1, k("similar-examples")], ["influence", 2, k("influence")]]) {
    await page.selectOption("#method", method);
    await page.click("#explain");
    await page.waitForFunction((n) => document.querySelectorAll("#attributions .rows").length === n
      && [...document.querySelectorAll("#attributions .rows img")].every((i) => i.complete && i.naturalWidth === 28),
      groups, { timeout: 20000 });
    const shown = await page.evaluate(() => [...document.querySelectorAll("#attributions .rows")].map((r) => r.querySelectorAll("figure").length));
    if (shown[0] !== per) failures.push(`${method}: rows shown ${JSON.stringify(shown)}`);
    await page.locator("#attributions").scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${shots}/web-page-${method}.png` });
  }
  await page.click("#suspects");
  await page.waitForFunction(() => (document.querySelector("#attributions h4")?.innerText || "").startsWith("Likely mislabels"), null, { timeout: 20000 });
  const suspects = await page.evaluate(() => document.querySelectorAll("#attributions .rows figure").length);
  if (suspects !== 48) failures.push(`suspects: ${suspects} rows shown`);
  await page.locator("#attributions").scrollIntoViewIfNeeded();
  await page.screenshot({ path: `${shots}/web-page-suspects.png` });
  // Concept sets: the model's sets as the API lists them, TCAV of one for a class (its bar chart
  // and its table per layer), then what each layer knows about the classes (the curve and its table).
  const sets = (await (await fetch(new URL("v1/models/fashion-cnn/concepts", base))).json()).map((c) => c.name);
  const conceptSets = await page.evaluate(() => [...document.querySelectorAll("#concept option")].map((o) => o.value));
  if (conceptSets.join() !== sets.join() || !conceptSets.includes("bags")) failures.push(`concept sets: page ${conceptSets}, API ${sets}`);
  await page.selectOption("#concept", "bags");
  await page.selectOption("#target", "8");
  for (const [button, caption, columns] of [["tcav", "TCAV of bags for Bag", 5], ["layer-information", "what each layer knows", 5]]) {
    await page.click(`#${button}`);
    await page.waitForFunction((c) => document.getElementById("overlay-caption").innerText === c
      && document.getElementById("overlay").complete && document.getElementById("overlay").naturalWidth > 0
      && document.querySelectorAll("#attributions table.layers tbody tr").length > 0, caption, { timeout: 120000 });
    const table = await page.evaluate(() => [...document.querySelectorAll("#attributions table.layers tbody tr")]
      .map((tr) => [...tr.querySelectorAll("td")].map((td) => td.innerText)));
    // The default three layers, each with every figure filled (the last layer shares nothing with a next one).
    if (table.length !== 3 || table.some((row) => row.length !== columns || row.slice(0, 4).some((v) => v === "" || v === "–"))) {
      failures.push(`${button}: table ${JSON.stringify(table)}`);
    }
    if (button === "tcav" && !table.every((row) => Number(row[1].split(" ")[0]) >= 0 && Number(row[1].split(" ")[0]) <= 1)) {
      failures.push(`tcav: scores ${JSON.stringify(table)}`);
    }
    await page.locator("#attributions").scrollIntoViewIfNeeded();
    await page.screenshot({ path: `${shots}/web-page-${button}.png` });
  }
  // A problem+json error is shown readably.
  await page.selectOption("#method", "integrated-gradients");
  await page.fill("[data-param=steps]", "1");
  await page.click("#explain");
  await page.waitForSelector(".error", { timeout: 20000 });
  const error = await page.innerText(".error");
  if (!error.includes("steps")) failures.push(`error box: ${error}`);
  await page.screenshot({ path: `${shots}/web-page-error.png` });
  // A text model (the service also serves the tests' keyword model, when the test wrote it):
  // the text with its words highlighted, the deciding word the most strongly.
  if (await page.locator("#model option[value=keywords]").count()) {
    await page.selectOption("#model", "keywords");
    if (await page.isHidden("#text-input")) failures.push("the text box is hidden for a text model");
    const offered = await page.evaluate(() => [...document.querySelectorAll("#method option")].map((o) => o.value));
    if (offered.includes("grad-cam") || !offered.includes("occlusion")) failures.push(`text methods: ${offered}`);
    await page.selectOption("#method", "occlusion");
    await page.fill("#text", "The movie was great, but the ending was dull.");
    await page.click("#explain");
    await page.waitForSelector("#attributions section.explaind-text mark", { timeout: 20000 });
    const strongest = await page.evaluate(() => {
      const marks = [...document.querySelectorAll("#attributions mark")];
      marks.sort((a, b) => Number(b.dataset.value) - Number(a.dataset.value));
      return marks[0].innerText;
    });
    if (strongest !== "great") failures.push(`text: the strongest word is ${strongest}`);
    await page.waitForFunction(() => (document.querySelector("#predictions")?.innerText || "").includes("positive"), null, { timeout: 20000 });
    await page.screenshot({ path: `${shots}/web-page-text.png` });
  } else {
    failures.push("no text model to try");
  }
  // A detector: predict draws its detections as boxes over the image (in the image's pixels); a
  // click on a box explains that detection ({"detection": i}) with the chosen method.
  const sent = [];
  page.on("request", (r) => { if (r.url().includes("/explain/")) sent.push(r.postData() || ""); });
  await page.selectOption("#model", "detector");
  if (await page.isHidden("#image-input")) failures.push("the image input is hidden for a detector");
  await page.setInputFiles("#file", detectorImage);
  await page.click("#predict");
  await page.waitForFunction(() => document.querySelectorAll("#boxes .det").length > 0, null, { timeout: 20000 });
  const drawn = await page.evaluate(() => [...document.querySelectorAll("#boxes .det rect")]
    .map((r) => ["x", "y", "width", "height"].map((k) => Number(r.getAttribute(k)))));
  if (JSON.stringify(drawn) !== "[[0,16,16,16]]") failures.push(`detector: boxes drawn ${JSON.stringify(drawn)}`);
  const options = await page.evaluate(() => [...document.querySelectorAll("#target option")].map((o) => o.value));
  if (options.join() !== ",detection:0") failures.push(`detector: targets ${options}`);
  await page.selectOption("#method", "saliency");
  sent.length = 0;
  await page.click("#boxes .det");
  await page.waitForFunction(() => !document.getElementById("overlay-figure").hidden
    && document.getElementById("overlay-caption").innerText.startsWith("saliency"), null, { timeout: 20000 });
  await page.waitForFunction(() => document.getElementById("overlay").naturalWidth > 0, null, { timeout: 10000 });
  const explained = await page.evaluate(() => ({ width: document.getElementById("overlay").naturalWidth,
    caption: document.getElementById("overlay-caption").innerText,
    chosen: document.querySelector("#boxes .det.chosen")?.dataset.detection }));
  const asked = sent.map((b) => { try { return JSON.parse(b).target; } catch { return null; } });
  if (explained.width !== 32 || !explained.caption.includes("bright") || explained.chosen !== "0"
    || JSON.stringify(asked) !== '[{"detection":0}]') {
    failures.push(`detector: explained ${JSON.stringify(explained)}, targets sent ${JSON.stringify(asked)}`);
  }
  await page.screenshot({ path: `${shots}/web-page-detector.png` });
  // A segmenter: its class mask as a translucent layer over the image, one colour per class.
  await page.selectOption("#model", "seg");
  await page.setInputFiles("#file", grayImage);
  await page.click("#predict");
  await page.waitForFunction(() => document.getElementById("mask-layer").style.display === "block", null, { timeout: 20000 });
  const layer = await page.evaluate(() => {
    const c = document.getElementById("mask-layer");
    const alpha = c.getContext("2d").getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 3);
    return { width: c.width, classes: c.dataset.classes, translucent: alpha.every((a) => a === 0 || a === 128),
      boxes: document.getElementById("boxes").style.display };
  });
  if (layer.width !== 16 || !layer.classes || !layer.translucent || layer.boxes !== "none") {
    failures.push(`segmenter: mask layer ${JSON.stringify(layer)}`);
  }
  await page.screenshot({ path: `${shots}/web-page-segmenter.png` });
  // A multi-label tagger: every label over its threshold, as the API lists them.
  await page.selectOption("#model", "tagger");
  await page.click("#predict");
  await page.waitForFunction(() => !document.getElementById("working").offsetParent, null, { timeout: 20000 });
  const tagged = await (await fetch(new URL("v1/models/tagger/predict", base), {
    method: "POST", headers: { "content-type": "image/png" }, body: readFileSync(grayImage) })).json();
  const listed = await page.evaluate(() => ({ title: document.getElementById("predictions-title").innerText,
    rows: [...document.querySelectorAll("#predictions tbody tr")].map((r) => r.cells[0].innerText) }));
  const want = tagged.predictions.length ? tagged.predictions.map((p) => p.label) : ["No label is over its threshold."];
  if (listed.title !== "Labels over their thresholds" || listed.rows.join() !== want.join()) {
    failures.push(`tagger: listed ${JSON.stringify(listed)}, API ${JSON.stringify(tagged.predictions)}`);
  }
  // A decision report of an audited tabular explanation: the decision, its factors in words with
  // the manifest's descriptions shown as text (markup in them escaped, nothing run), the chart.
  const holdout = JSON.parse(readFileSync(new URL("../fixtures/breast_cancer_holdout.json", import.meta.url)));
  const answer = await (await fetch(new URL("v1/models/breast-cancer/explain/kernel-shap", base), {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ features: holdout.cases[0].features, seed: 3, audit: true }),
  })).json();
  const record = answer.audit_record?.id;
  if (!record) failures.push(`report: no record ${JSON.stringify(answer).slice(0, 300)}`);
  await page.goto(new URL(`v1/audit/records/${record}/report?counterfactual=true`, base).href, { waitUntil: "load" });
  const report = await page.evaluate(() => ({
    title: document.querySelector("h1")?.innerText,
    text: document.body.innerText,
    scripts: document.querySelectorAll("script").length,
    chart: document.getElementById("picture")?.naturalWidth,
    factors: document.querySelectorAll("#factors li").length,
  }));
  const top = answer.features?.[0]?.name;
  if (report.title !== `Decision: ${answer.target?.label}`) failures.push(`report: title ${report.title}`);
  if (!report.text.includes(`the ${top}, in plain words <script>alert(1)</script>`)) {
    failures.push(`report: the description of ${top} is not shown as text`);
  }
  if (report.scripts !== 0) failures.push(`report: ${report.scripts} script elements`);
  if (report.chart !== 720) failures.push(`report: chart ${report.chart} wide`);
  if (report.factors !== 5) failures.push(`report: ${report.factors} factors`);
  for (const words of ["What would change it to", "2.1 <b>", "Position in the audit chain"]) {
    if (!report.text.includes(words)) failures.push(`report: no "${words}"`);
  }
  await page.screenshot({ path: `${shots}/decision-report.png`, fullPage: true });
  if (failures.length) {
    console.error(failures.join("\n"));
    process.exit(1);
  }
  console.log("web page: ok");
} finally {
  await browser.close();
}
