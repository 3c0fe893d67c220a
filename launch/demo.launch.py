"""Demo: the bundled video clip played as a camera, and the detector on it; ends after the video.

    ros2 launch centernet_ros demo.launch.py
    ros2 launch centernet_ros demo.launch.py max_frames:=50
    ros2 launch centernet_ros demo.launch.py video:=/path/to/clip.mp4 loop:=true device:=cuda

Topics: /demo/camera/image_raw (video), /demo/camera/detections (vision_msgs/Detection2DArray),
/demo/camera/detections_image (annotated, for rviz), /label_info, /diagnostics. Both nodes read
``params_file`` (default: the package's config/demo.yaml); the detector is started through
detect.launch.py with the same file. The network input defaults to what ``centernet-demo`` uses:
384x640, the clip at full resolution (``input_size`` overrides it). Without ``loop`` the launch ends,
with exit status 0, once the video publisher has sent its last frame (and got its detections back)
or ``max_frames`` frames. ``fastdds_profile`` (default ``auto``: the package's
config/fastdds_large_frames.xml unless the environment names a Fast DDS profile; a path; '' = none)
goes to both processes: the video publisher's frames reach the detector through its shared memory.
"""
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument, EmitEvent, IncludeLaunchDescription, LogInfo, OpaqueFunction, RegisterEventHandler,
)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, ThisLaunchFileDir
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from centernet_ros.ros.fastdds import LAUNCH_ARGUMENT_HELP, launch_argument_env
from centernet_ros.ros.package_files import PACKAGE, package_file



def _video_publisher(context):
    overrides = {}
    video = LaunchConfiguration('video').perform(context)
    if video:
        overrides['path'] = ParameterValue(video, value_type=str)
    rate = LaunchConfiguration('rate').perform(context)
    if rate:
        try:
            overrides['rate'] = float(rate)
        except ValueError:
            raise ValueError(f'launch argument rate:={rate!r}: expected a number') from None
    loop = LaunchConfiguration('loop').perform(context).lower()
    if loop:
        if loop not in ('true', 'false'):
            raise ValueError(f"launch argument loop:={loop!r}: expected true or false")
        overrides['loop'] = loop == 'true'
    max_frames = LaunchConfiguration('max_frames').perform(context)
    if max_frames:
        if not max_frames.isdigit():
            raise ValueError(f'launch argument max_frames:={max_frames!r}: expected a whole number >= 0')
        overrides['max_frames'] = int(max_frames)
    parameters = [LaunchConfiguration('params_file').perform(context)]
    if overrides:
        parameters.append(overrides)
    video_publisher = Node(
        package=PACKAGE,
        executable='centernet-video-publisher',
        name='video_publisher',
        parameters=parameters,
        additional_env=launch_argument_env(context),
        output='screen',
        emulate_tty=True,
    )
    # The video publisher's process ends after the last frame (or on an error): so does the demo.
    end = RegisterEventHandler(OnProcessExit(
        target_action=video_publisher,
        on_exit=[LogInfo(msg='demo: the video publisher has ended; shutting down'),
                 EmitEvent(event=Shutdown(reason='the video publisher has ended'))],
    ))
    return [video_publisher, end]


def _detector(context):
    input_size = LaunchConfiguration('input_size').perform(context)
    if not input_size:  # like centernet-demo
        from centernet_ros.ros.demo import INPUT_SIZE

        input_size = f'[{INPUT_SIZE[0]}, {INPUT_SIZE[1]}]'
    names = ('params_file', 'weights', 'device', 'score_threshold', 'log_level', 'fastdds_profile')
    arguments = {name: LaunchConfiguration(name).perform(context) for name in names}
    arguments['input_size'] = input_size
    return [IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([ThisLaunchFileDir(), 'detect.launch.py'])),
        launch_arguments=arguments.items(),
    )]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=str(package_file('config', 'demo.yaml')),
                              description='ROS parameters file of both nodes'),
        DeclareLaunchArgument('video', default_value='',
                              description='video file; empty: from params_file (bundled slow_traffic_small.mp4)'),
        DeclareLaunchArgument('rate', default_value='',
                              description='frames per second; 0 = the file rate; < 0 = as fast as possible; '
                              'empty: from params_file'),
        DeclareLaunchArgument('loop', default_value='', description='true | false; empty: from params_file'),
        DeclareLaunchArgument('max_frames', default_value='',
                              description='stop after this many frames (0 = the whole video); empty: from params_file'),
        DeclareLaunchArgument('weights', default_value='', description='model file; empty: from params_file'),
        DeclareLaunchArgument('device', default_value='',
                              description='auto | cpu | cuda | cuda:N; empty: from params_file'),
        DeclareLaunchArgument('input_size', default_value='',
                              description='network input [H, W]; empty: [384, 640], the clip at full resolution'),
        DeclareLaunchArgument('score_threshold', default_value='',
                              description='score threshold; empty: from params_file'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description="level of the detector's logger: debug | info | warn | error | fatal"),
        DeclareLaunchArgument('fastdds_profile', default_value='auto', description=LAUNCH_ARGUMENT_HELP),
        OpaqueFunction(function=_video_publisher),
        OpaqueFunction(function=_detector),
    ])
