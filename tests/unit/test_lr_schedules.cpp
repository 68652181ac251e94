// NeMo's learning-rate schedules, equal to NeMo's own implementation (nemo.core.optim.lr_scheduler, evaluated step by step
// by tools/reference/make_checkpoint_fixtures.py into lr_schedules.json) on a table of settings.
#include <catch2/catch.hpp>
#include <filesystem>
#include <set>

#include "dreambooth/io/json.hpp"
#include "dreambooth/train/lr_schedule.hpp"

using namespace dreambooth;

TEST_CASE("NeMo's schedules give NeMo's learning rates step by step", "[lr][nemo]") {
  const auto table = io::read_json(std::filesystem::path(DREAMBOOTH_TEST_DATA_DIR) / "checkpoints" / "lr_schedules.json", "lr table");
  REQUIRE(table.size() >= 15);
  std::set<std::string> names;
  for (const auto& entry : table) {
    train::LRSchedule s;
    s.name = entry["name"].get<std::string>();
    names.insert(s.name);
    const auto& a = entry["args"];
    const auto num = [&](const char* k) { return a.contains(k) ? std::optional<double>(a[k].get<double>()) : std::nullopt; };
    s.warmup_steps = a.contains("warmup_steps") ? a["warmup_steps"].get<long>() : 0;
    s.total_steps = a["max_steps"].get<long>();
    s.warmup_ratio = num("warmup_ratio");
    s.hold_steps = num("hold_steps");
    s.hold_ratio = num("hold_ratio");
    s.constant_steps = num("constant_steps");
    s.constant_ratio = num("constant_ratio");
    s.min_lr = num("min_lr");
    s.d_model = num("d_model");
    if (a.contains("decay_rate")) s.decay_rate = a["decay_rate"].get<double>();
    if (a.contains("power")) s.power = a["power"].get<double>();
    if (a.contains("cycle")) s.cycle = a["cycle"].get<bool>();
    s.validate();
    const auto lr = entry["lr"].get<double>();
    const auto& values = entry["values"];
    for (std::size_t step = 0; step < values.size(); ++step) {
      INFO(s.name << " " << a.dump() << " at step " << step);
      REQUIRE(s.rate(static_cast<long>(step), lr) == Approx(values[step].get<double>()).epsilon(1e-12).margin(1e-15));
    }
  }
  REQUIRE(names.size() >= 12);  // every NeMo schedule is in the table
  // NeMo's stock DreamBooth schedule: warmup 1 then hold at the base rate
  train::LRSchedule stock{"WarmupHoldPolicy", 1, 400};
  stock.hold_steps = 1e13;
  REQUIRE(stock.rate(0, 1e-6) == Approx(5e-7));
  REQUIRE(stock.rate(1, 1e-6) == Approx(1e-6));
  REQUIRE(stock.rate(399, 1e-6) == Approx(1e-6));
  train::LRSchedule bad{"WarmupFooPolicy", 1, 10};
  REQUIRE_THROWS_WITH(bad.validate(), Catch::Contains("\"WarmupFooPolicy\" is not supported") && Catch::Contains("CosineAnnealing"));
}
