// kohya's aspect-ratio buckets: the bucket resolutions and every image's bucket, resized size and aspect-ratio error
// equal to sd-scripts' own make_bucket_resolutions and BucketManager.select_bucket on a table of 120 image sizes under
// four settings (tests/data/buckets/kohya_buckets.json, from tools/reference/make_bucket_fixtures.py).
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "dreambooth/data/buckets.hpp"

using namespace dreambooth;

TEST_CASE("bucket resolutions and assignments equal kohya's on a table of image sizes", "[buckets][reference]") {
  std::ifstream in(std::filesystem::path(DREAMBOOTH_TEST_DATA_DIR) / "buckets" / "kohya_buckets.json");
  REQUIRE(in);
  const auto fixture = nlohmann::json::parse(in);
  std::size_t checked = 0, distinct_buckets = 0;
  for (const auto& config : fixture.at("configs")) {
    INFO(config.at("name").get<std::string>());
    data::BucketConfig bc;
    bc.enabled = true;
    bc.min_size = config.at("min_bucket_reso");
    bc.max_size = config.at("max_bucket_reso");
    bc.steps = config.at("bucket_reso_steps");
    bc.no_upscale = config.at("bucket_no_upscale");
    const data::BucketAssigner assigner(bc, config.at("resolution").get<std::int64_t>());
    std::vector<data::Size2> expected;
    for (const auto& r : config.at("bucket_resolutions")) expected.push_back({r[0], r[1]});
    REQUIRE(assigner.resolutions() == expected);
    std::set<data::Size2> used;
    for (const auto& image : config.at("images")) {
      const data::Size2 size{image.at("size")[0], image.at("size")[1]};
      INFO("image " << size.str());
      const auto choice = assigner.select(size.width, size.height);
      CHECK(choice.bucket == data::Size2{image.at("bucket")[0], image.at("bucket")[1]});
      CHECK(choice.resized == data::Size2{image.at("resized")[0], image.at("resized")[1]});
      CHECK(choice.ar_error == Approx(image.at("ar_error").get<double>()).margin(1e-12));
      // the resized picture covers its bucket, so the crop never pads
      CHECK(choice.resized.width >= choice.bucket.width);
      CHECK(choice.resized.height >= choice.bucket.height);
      used.insert(choice.bucket);
      ++checked;
    }
    distinct_buckets += used.size();
  }
  CHECK(checked == 480);
  CHECK(distinct_buckets > 20);  // the table spreads over many buckets, not one
}

TEST_CASE("bucket settings kohya refuses are refused", "[buckets][errors]") {
  data::BucketConfig bc;
  bc.enabled = true;
  bc.max_size = 256;
  REQUIRE_THROWS_WITH(data::BucketAssigner(bc, 512), Catch::Contains("max_bucket_reso 256"));
  bc = {};
  bc.no_upscale = true;
  const data::BucketAssigner no_upscale(bc, 512);
  REQUIRE_THROWS_WITH(no_upscale.select(40, 600), Catch::Contains("40x600"));
}
