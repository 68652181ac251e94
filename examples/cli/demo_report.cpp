// dreambooth demo-report --demo-dir DIR [--check]: measures a demo run (eval/demo_report.hpp, docs/demo.md): writes
// DIR/report.json, DIR/grid.png (before / after) and DIR/loss.png, and prints a summary. With --check it exits 1 unless
// the fine-tuned model's subject samples came closer to the instance photos by --min-fidelity-gain, and, when a run
// without prior preservation is there, its class samples drifted further toward the subject than the run with it.
#include <cstdio>

#include "command.hpp"
#include "dreambooth/eval/demo_report.hpp"
#include "dreambooth/eval/loss_plot.hpp"
#include "dreambooth/io/atomic_file.hpp"

namespace cli {

namespace {
struct Arguments {
  std::string demo_dir, subject_prompt = "a photo of sks ball", class_prompt = "a photo of a ball";
  int columns = 6, scale = 1;
  bool check = false;
  double min_fidelity_gain = 0.1;
};

int demo_report(const Arguments& a) {
  using namespace dreambooth;
  namespace fs = std::filesystem;
  const fs::path dir = a.demo_dir;
  const auto pictures = eval::read_demo_pictures(dir);
  const auto figures = eval::measure_demo(pictures);
  io::write_file_atomically(dir / "report.json", eval::to_json(figures).dump(2) + "\n", "demo report");
  eval::write_demo_grid(dir / "grid.png", pictures, a.subject_prompt, a.class_prompt, a.columns, a.scale);
  std::vector<eval::LossCurve> curves;
  if (fs::exists(dir / "prior" / "metrics.jsonl"))
    curves.push_back(eval::read_loss_curve(dir / "prior" / "metrics.jsonl", "WITH PRIOR", {40, 90, 200}));
  if (fs::exists(dir / "no-prior" / "metrics.jsonl"))
    curves.push_back(eval::read_loss_curve(dir / "no-prior" / "metrics.jsonl", "WITHOUT PRIOR", {220, 110, 30}));
  if (!curves.empty()) eval::write_loss_plot(dir / "loss.png", curves, "TRAINING LOSS");

  const auto& f = figures;
  std::printf("demo: colour distance of the samples' objects to the subject's (0 = the same colours, 1 = none in common):\n");
  std::printf("demo:   \"%s\": before %.3f, after with prior preservation %.3f", a.subject_prompt.c_str(), f.base.subject_distance,
              f.prior.subject_distance);
  if (f.no_prior) std::printf(", without %.3f", f.no_prior->subject_distance);
  std::printf("  (fidelity gain %.3f)\n", f.fidelity_gain(f.prior));
  std::printf("demo:   \"%s\": before %.3f, after with prior preservation %.3f", a.class_prompt.c_str(), f.base.class_distance,
              f.prior.class_distance);
  if (f.no_prior) std::printf(", without %.3f", f.no_prior->class_distance);
  std::printf("  (drift toward the subject %.3f", f.class_drift(f.prior));
  if (f.no_prior) std::printf(" with prior preservation, %.3f without", f.class_drift(*f.no_prior));
  std::printf(")\n");
  std::printf("demo:   variety of \"%s\" (mean distance between two samples): before %.3f, after with prior preservation %.3f",
              a.class_prompt.c_str(), f.base.class_variety, f.prior.class_variety);
  if (f.no_prior) std::printf(", without %.3f", f.no_prior->class_variety);
  std::printf("\ndemo: wrote %s, %s%s\n", (dir / "report.json").string().c_str(), (dir / "grid.png").string().c_str(),
              curves.empty() ? "" : (", " + (dir / "loss.png").string()).c_str());
  if (!a.check) return 0;
  bool ok = true;
  if (f.fidelity_gain(f.prior) < a.min_fidelity_gain) {
    std::fprintf(stderr, "demo-report: check failed: fidelity gain %.3f is below %.3f\n", f.fidelity_gain(f.prior), a.min_fidelity_gain);
    ok = false;
  }
  if (f.no_prior && f.class_drift(f.prior) >= f.class_drift(*f.no_prior)) {
    std::fprintf(stderr, "demo-report: check failed: the class drifted %.3f with prior preservation, not less than %.3f without\n",
                 f.class_drift(f.prior), f.class_drift(*f.no_prior));
    ok = false;
  }
  if (ok) std::printf("demo: check passed\n");
  return ok ? 0 : 1;
}
}  // namespace

void add_demo_report(CLI::App& root, Run& run) {
  auto [app, a] = add_command<Arguments>(root, run, "demo-report",
                                         "measure a demo run (tools/run.sh): subject fidelity, class drift and variety from its pictures "
                                         "(docs/demo.md); writes report.json, grid.png and loss.png into the demo folder",
                                         demo_report);
  app->add_option("--demo-dir", a->demo_dir,
                  "the demo's folder: instance/, samples/{base,prior[,no-prior]}/{subject,class}-K.png, prior/ and no-prior/ metrics.jsonl")
      ->required();
  app->add_option("--subject-prompt", a->subject_prompt, "the subject prompt, for the grid's labels")->capture_default_str();
  app->add_option("--class-prompt", a->class_prompt, "the class prompt, for the grid's labels")->capture_default_str();
  app->add_option("--columns", a->columns, "pictures per row of the grid")->capture_default_str()->check(CLI::Range(1, 64));
  app->add_option("--scale", a->scale, "the grid's pictures enlarged this many times")->capture_default_str()->check(CLI::Range(1, 8));
  app->add_flag("--check", a->check, "exit 1 unless fidelity rose by --min-fidelity-gain and prior preservation reduced the class drift");
  app->add_option("--min-fidelity-gain", a->min_fidelity_gain, "the fidelity gain --check asks for")->capture_default_str();
}

}  // namespace cli
